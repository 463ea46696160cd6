use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = haven::cli::Cli::parse();
    haven::app::main(cli)
}
