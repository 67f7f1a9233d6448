# Shared by the benchmark scripts: `source "$here/lib.sh"`.

# Installs those of the named Debian packages that are missing (the machine may be fresh).
# Arguments starting with `-` are passed to apt-get install. The package lists may be stale on
# a fresh machine, so a failed install is retried once after `apt-get update`.
install_missing() {
    local opts=() missing=() p
    for p in "$@"; do
        case "$p" in
            -*) opts+=("$p") ;;
            *)
                dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
                    missing+=("$p")
                ;;
        esac
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    echo ">> installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${opts[@]}" "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${opts[@]}" "${missing[@]}" >&2; }
}
