# tests/vm/private-apt.sh: sourced by tests/vm/fetch-kernel and
# tests/bench/sched-reference. private_apt DIR sets the array A to the
# apt-get/apt-cache options that keep all apt state under DIR (sources.list,
# lists/, the download cache): nothing under /etc/apt or /var/lib/apt is
# read or written.
private_apt() {
    local C=$1
    A=(-q
       -o "Dir::Etc::SourceList=$C/sources.list"
       -o "Dir::Etc::SourceParts=/dev/null"
       -o "Dir::Etc::Preferences=/dev/null"
       -o "Dir::Etc::PreferencesParts=/dev/null"
       -o "Dir::State::Lists=$C/lists"
       -o "Dir::Cache=$C"
       -o "APT::Architectures=amd64"
       -o "Acquire::Languages=none"
       -o "Acquire::http::Timeout=30"
       -o "Acquire::Retries=1")
    if ((EUID == 0)); then
        # Root would otherwise drop to _apt, which cannot write into DIR.
        A+=(-o "APT::Sandbox::User=root")
    fi
}
