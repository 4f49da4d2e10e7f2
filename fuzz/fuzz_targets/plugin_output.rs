//! A node-problem-detector plugin's output and exit (the plugin protocol), and the line the agent quotes from a
//! failed tool's output (`tools::what_it_said`): both take arbitrary bytes a program printed.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nodemedic_agent::exec::CommandOutput;
use nodemedic_agent::plugin::plugin_verdict;
use nodemedic_agent::tools::what_it_said;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let stdout = String::from_utf8_lossy(rest);
    let exit_code = match first % 5 {
        0 => None,
        code => Some(i32::from(code) - 1),
    };
    let limit = usize::from(first);
    let _ = plugin_verdict("fuzz", exit_code, first & 0x80 != 0, &stdout, limit);
    let _ = plugin_verdict("fuzz", exit_code, false, &stdout, 4096);
    let (out, err) = stdout.split_at(stdout.char_indices().nth(limit).map_or(stdout.len(), |(i, _)| i));
    let output = CommandOutput {
        exit_code,
        stdout: out.to_string(),
        stderr: err.to_string(),
        timed_out: false,
        elapsed: Duration::ZERO,
        stdout_cut: false,
    };
    let _ = what_it_said(&output);
});
