//! The bounded CI pass of the fuzzer: a few thousand mutants per reader, every one rejected
//! with an error or accepted, none panicking, hanging or allocating past the cap; and each
//! unmutated seed accepted (else the target would fuzz only its own error path).

use qforge_fuzz::{Fuzzer, Limits, Outcome, TARGETS};

/// Inputs per reader; `QFORGE_FUZZ_CI_INPUTS` overrides.
fn inputs() -> u64 {
    std::env::var("QFORGE_FUZZ_CI_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn every_reader_survives_mutants() {
    let findings = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    for t in TARGETS {
        let f = Fuzzer::new(t, Limits::default(), findings.path()).unwrap();
        assert_eq!(
            f.run_first_seed(),
            Outcome::Ok,
            "{}: seed rejected",
            t.name()
        );
        let stats = f.fuzz(inputs(), 0xC1);
        eprintln!("{}", stats.line(t));
        assert_eq!(stats.inputs, inputs());
        assert_eq!(stats.ok + stats.rejected + stats.bad(), stats.inputs);
        // the mutants reach past the first check: some are still accepted, and the
        // rejections are not all one error
        assert!(stats.ok > 0, "{}: no mutant accepted", t.name());
        assert!(stats.errors.len() >= 5, "{}: {:?}", t.name(), stats.errors);
        if stats.bad() != 0 {
            failed.push((t.name(), stats.findings));
        }
    }
    assert!(failed.is_empty(), "findings: {failed:?}");
}
