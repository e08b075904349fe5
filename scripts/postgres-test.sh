#!/usr/bin/env bash
# The management API's test suite against a real PostgreSQL server. Finds PostgreSQL's server
# binaries, or installs Debian's `postgresql` package; starts a throwaway cluster in a temporary
# directory, on 127.0.0.1 and a free port; runs the tests with WHISK_TEST_POSTGRES_URL pointing at
# it; then stops the server and removes the directory, also on failure or Ctrl-C. Exits with the
# tests' status.
#
#   scripts/postgres-test.sh                          # runs `cargo test -p management-api`
#   scripts/postgres-test.sh cargo test --workspace   # runs that command instead
#
# When no server can be installed or started it says so plainly ("PostgreSQL suite skipped: ...");
# then, without a command it exits 0, and with one it runs the command anyway, whose PostgreSQL
# variants report themselves skipped. `make test` uses the second form, so the workspace is built
# and tested once (`-p management-api` alone resolves features differently and rebuilds deps).
set -euo pipefail
cd "$(dirname "$0")/.."

explicit=""
if [ "$#" -gt 0 ]; then
    explicit=yes
    command=("$@")
else
    command=("${CARGO:-cargo}" test -p management-api)
fi
# Debian's binaries live in /usr/lib/postgresql/<major>/bin, off PATH; take PATH's first, else the newest.
find_bindir() {
    local initdb
    if initdb=$(command -v initdb) && command -v pg_ctl >/dev/null; then
        dirname "$(readlink -f "$initdb")"
    else
        { find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null || true; } |
            sort -V | tail -n 1
    fi
}

skip() {
    echo "PostgreSQL suite skipped: $1"
    [ -n "${2:-}" ] && [ -s "$2" ] && sed 's/^/    /' "$2" | tail -n 20
    if [ -n "$explicit" ]; then
        status=0
        "${command[@]}" || status=$?
        exit "$status"
    fi
    exit 0
}

workdir=$(mktemp -d "${TMPDIR:-/tmp}/whisk-postgres.XXXXXX")
started=""
# Root may not run initdb or the server: they run as the `postgres` user the package creates.
as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
cleanup() {
    if [ -n "$started" ]; then
        as_server_user "$bindir/pg_ctl" -D "$workdir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bindir=$(find_bindir)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "PostgreSQL: no server binaries found; installing Debian's postgresql package"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo -n true 2>/dev/null || skip "could not install a server (not root, and no password-less sudo)"
        sudo="sudo -n"
    fi
    command -v apt-get >/dev/null || skip "could not install a server (no apt-get)"
    # As the official postgres image does: no `main` cluster (nor a service left running on 5432).
    if ! (
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -qq &&
            $sudo apt-get install -y -qq --no-install-recommends postgresql-common &&
            $sudo sed -ri 's/#? *(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf &&
            $sudo apt-get install -y -qq --no-install-recommends postgresql
    ) >"$workdir/apt.log" 2>&1; then
        skip "could not install a server" "$workdir/apt.log"
    fi
    bindir=$(find_bindir)
    [ -n "$bindir" ] && [ -x "$bindir/initdb" ] || skip "could not install a server (no initdb after installing)"
fi
[ "$(id -u)" -ne 0 ] || { id postgres >/dev/null 2>&1 && command -v runuser >/dev/null; } ||
    skip "could not start a server (running as root, with no postgres user or no runuser)"
[ "$(id -u)" -ne 0 ] || chown postgres: "$workdir"

if ! as_server_user "$bindir/initdb" -D "$workdir/data" -U whisk --auth=trust -E UTF8 --locale=C --no-sync \
    >"$workdir/initdb.log" 2>&1; then
    skip "could not start a server (initdb failed)" "$workdir/initdb.log"
fi

# A port nothing listens on; if another process takes it first, the start fails and the next try
# draws another.
free_port() {
    local port
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    return 1
}
for _ in 1 2 3; do
    port=$(free_port) || break
    # A cluster thrown away after the run needs no durability.
    if as_server_user "$bindir/pg_ctl" -D "$workdir/data" -l "$workdir/server.log" -w -t 30 \
        -o "-h 127.0.0.1 -p $port -k $workdir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null 2>&1; then
        started=yes
        break
    fi
done
[ -n "$started" ] || skip "could not start a server" "$workdir/server.log"

echo "$("$bindir/postgres" --version) on 127.0.0.1:$port (cluster in $workdir)"
status=0
WHISK_TEST_POSTGRES_URL="postgres://whisk@127.0.0.1:$port/postgres" "${command[@]}" || status=$?
exit "$status"
