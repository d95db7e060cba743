//! `agent-budget-baseline`: see `--help`.

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    std::process::exit(agent_budget_baseline::cli::main(&args));
}
