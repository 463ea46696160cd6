#!/usr/bin/env bash
# Peak resident memory (VmHWM) of `haven serve` receiving one large multipart upload,
# into the local blob store and into S3 (moto's server), with no workers (the upload
# only). Usage: examples/blob_store_rss.sh HAVEN_BINARY MOTO_SERVER [MEGABYTES]
# Prints one line per store. Everything lives in a temporary directory, removed at the end.
set -euo pipefail
haven="$1"
moto="$2"
megabytes="${3:-500}"
work="$(mktemp -d)"
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A CSV of about $megabytes MB: unique numbers, names, a camp and a phone number.
python3 - "$work/big.csv" "$megabytes" <<'EOF'
import sys
path, megabytes = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write("unhcr_number,given_name,family_name,gender,current_camp,phone_number\n")
    i, size = 0, 0
    while size < megabytes * 1_000_000:
        line = f"BENCH-{i:09d},Amina,Hassan{i % 997},female,Kakuma Section {i % 40},+254700{i % 1000000:06d}\n"
        f.write(line)
        size += len(line)
        i += 1
EOF
echo "CSV: $(du -m "$work/big.csv" | cut -f1) MiB"

moto_port="$(free_port)"
"$moto" -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$moto_port/" && break; sleep 0.2; done
curl -sf -X PUT "http://127.0.0.1:$moto_port/bench" >/dev/null
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1

measure() {
  local name="$1" store="$2" port
  port="$(free_port)"
  mkdir -p "$work/$name"
  "$haven" serve --data-dir "$work/$name" --listen "127.0.0.1:$port" --workers 0 \
    --blob-store "$store" >"$work/$name.out" 2>"$work/$name.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do grep -q "password:" "$work/$name.out" 2>/dev/null && break; sleep 0.2; done
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.2; done
  local password token idle peak start end
  password="$(sed -n 's/.*password: //p' "$work/$name.out")"
  token="$(curl -sf "http://127.0.0.1:$port/api/v2/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"admin@demo.local\",\"password\":\"$password\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
  idle="$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")"
  start="$(date +%s%N)"
  curl -sf -o /dev/null -H "authorization: Bearer $token" -F "file=@$work/big.csv" \
    "http://127.0.0.1:$port/api/v2/bulk/import/schedule"
  end="$(date +%s%N)"
  peak="$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")"
  printf '%s: upload %d ms, peak RSS idle %d MiB, after the upload %d MiB\n' \
    "$name" $(((end - start) / 1000000)) $((idle / 1024)) $((peak / 1024))
  kill "$pid"
}

measure local "$work/local-blobs"
measure s3 "s3://bench/haven"
