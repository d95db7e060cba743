//! Prints the demo attribution log of known figures (the one the end-to-end test and the
//! README's "Budget baselines" example use): `cargo run -p agent-budget-baseline --example
//! demo-log > access.log`.

#[path = "../tests/demo_log/mod.rs"]
mod demo_log;

fn main() {
    print!("{}", demo_log::generated_log());
}
