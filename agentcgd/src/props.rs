//! Property tests (issue 13): the policy and config parsers, the depth
//! pre-scan and argv redaction never panic, whatever the input; catch-all
//! patterns never get through.

use std::path::Path;

use proptest::prelude::*;

use crate::config::Config;
use crate::policy::parse_family;

/// YAML-ish text: the tokens a policy is made of, in any order.
fn yamlish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("family: ".to_string()),
            Just("priority: ".to_string()),
            Just("match:".to_string()),
            Just("tools:".to_string()),
            Just("  - ".to_string()),
            Just("comm: ".to_string()),
            Just("exe: ".to_string()),
            Just("argv: ".to_string()),
            Just("uid: ".to_string()),
            Just("parent: ".to_string()),
            Just("descendants: ".to_string()),
            Just("high".to_string()),
            Just("low".to_string()),
            Just("\n".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just(", ".to_string()),
            Just("\"*\"".to_string()),
            Just("'".to_string()),
            Just("&a ".to_string()),
            Just("*a".to_string()),
            Just("<<: ".to_string()),
            Just("|".to_string()),
            Just("# ".to_string()),
            "[a-z0-9*?/\\[\\]._-]{1,12}",
        ],
        0..60,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn policy_parser_never_panics(text in any::<String>()) {
        let _ = parse_family(Path::new("f.yaml"), &text);
        let _ = Config::parse(&text);
    }

    #[test]
    fn policy_parser_never_panics_on_yamlish(text in yamlish()) {
        if let Ok(f) = parse_family(Path::new("f.yaml"), &text) {
            // What is accepted names something in every block.
            for b in &f.matches {
                let named = |g: &Option<crate::policy::Glob>| g.as_ref().is_some_and(|g| !g.catch_all());
                prop_assert!(
                    named(&b.comm) || named(&b.exe) || b.argv.iter().any(|g| !g.catch_all()),
                    "accepted a catch-all block: {b:?}"
                );
            }
        }
        let _ = Config::parse(&text);
    }

    #[test]
    fn depth_scan_never_panics_and_bounds_flow_nesting(text in any::<String>(), n in 0usize..200) {
        let _ = crate::limits::check_depth(&text);
        let nested = format!("a: {}x{}\n", "[".repeat(n), "]".repeat(n));
        prop_assert_eq!(crate::limits::check_depth(&nested).is_ok(), n < crate::limits::MAX_DEPTH);
    }

    #[test]
    fn redaction_never_panics_and_never_shows_a_key(
        args in proptest::collection::vec(any::<String>(), 0..6),
        key in "[A-Za-z0-9]{12,40}"
    ) {
        let _ = crate::redact::argv(&args);
        let secret = format!("sk-{key}");
        let shown = crate::redact::argv(&[
            "x".to_string(),
            format!("--api-key={key}"),
            "--token".to_string(),
            key.clone(),
            format!("OPENAI_API_KEY={key}"),
            format!("https://h/?k={secret}"),
        ]);
        prop_assert!(shown.iter().all(|a| !a.contains(&key)), "{shown:?}");
    }
}
