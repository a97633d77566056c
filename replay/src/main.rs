fn main() {
    eprintln!("agentcg-replay: not implemented yet (issue 4)");
    std::process::exit(2);
}
