//! The command line: subcommands of SPEC 1 over the shared [`Config`].

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "haven",
    args_override_self = true,
    version,
    about = "Bulk operations on patient records, scheduled, audited and reversible"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// HTTP API, web UI, scheduler and workers in one process (the default).
    Serve,
    /// Scheduler and workers only, no HTTP.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Create organizations and users.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the OpenAPI document of the API (what GET /api/v2/openapi.json answers).
    Openapi,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create an organization; prints its id as the last line.
    CreateOrg { name: String },
    /// Create a user; the password comes from HAVEN_PASSWORD or --password-stdin.
    CreateUser {
        #[arg(long)]
        org: Uuid,
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
        /// Read the password from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain; exit 0 when intact, 1 naming the first broken entry.
    /// Prints each chain's head as SEQ:HASH: record it outside the database (a log, a
    /// ticket) and give it back with --expect-head to detect a chain cut back or rewritten
    /// by someone who could write the database.
    Verify {
        #[arg(long)]
        org: Option<Uuid>,
        /// A head printed by an earlier run, SEQ:HASH; needs --org.
        #[arg(long, requires = "org")]
        expect_head: Option<crate::audit::Head>,
    },
}
