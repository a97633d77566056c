//! What `explain` shows of another process's command line: argv only to
//! root and to the process's owner, and known secret shapes masked even
//! then (an API key on a command line ends up in terminals and bug
//! reports).

const MASK: &str = "<redacted>";

/// Options whose value is a secret: `--api-key=V`, `--api-key V`, ...
const SECRET_OPTS: &[&str] = &[
    "api-key",
    "api_key",
    "apikey",
    "token",
    "access-token",
    "auth-token",
    "password",
    "passwd",
    "secret",
    "client-secret",
    "key",
];

/// Environment-style names whose value is a secret: `*_TOKEN=`, ...
const SECRET_SUFFIXES: &[&str] = &[
    "_TOKEN",
    "_KEY",
    "_SECRET",
    "_PASSWORD",
    "_PASS",
    "_APIKEY",
    "_API_KEY",
];

/// Token prefixes of the major providers (`sk-...`, `ghp_...`).
const TOKEN_PREFIXES: &[&str] = &[
    "sk-",
    "sk_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "github_pat_",
    "xoxb-",
    "xoxp-",
    "AKIA",
    "AIza",
    "glpat-",
    "hf_",
];

fn secret_opt(name: &str) -> bool {
    let n = name.trim_start_matches('-').to_ascii_lowercase();
    SECRET_OPTS
        .iter()
        .any(|o| n == *o || n.ends_with(&format!("-{o}")))
}

fn secret_var(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && SECRET_SUFFIXES
            .iter()
            .any(|s| n.ends_with(s) || n == s[1..])
}

fn looks_like_token(word: &str) -> bool {
    TOKEN_PREFIXES
        .iter()
        .any(|p| word.starts_with(p) && word.len() >= p.len() + 8)
}

/// Mask secrets in one argument (`prev`: the argument before it).
fn redact_one(arg: &str, prev: Option<&str>) -> String {
    // `--api-key V`: the value of a secret option given separately.
    if prev.is_some_and(|p| p.starts_with('-') && !p.contains('=') && secret_opt(p)) {
        return MASK.into();
    }
    // `Authorization: Bearer X`, `-H 'Authorization: ...'`.
    let lower = arg.to_ascii_lowercase();
    for h in [
        "authorization:",
        "proxy-authorization:",
        "x-api-key:",
        "cookie:",
    ] {
        if let Some(i) = lower.find(h) {
            return format!("{}{} {MASK}", &arg[..i], &arg[i..i + h.len()]);
        }
    }
    if let Some((name, _)) = arg.split_once('=') {
        if (name.starts_with('-') && secret_opt(name)) || secret_var(name) {
            return format!("{name}={MASK}");
        }
    }
    // Tokens anywhere in the text (`sk-...` inside a URL or a JSON blob).
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(arg.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(if looks_like_token(word) { MASK } else { word });
        word.clear();
    };
    for c in arg.chars() {
        if word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// argv with known secret shapes masked.
pub fn argv(argv: &[String]) -> Vec<String> {
    argv.iter()
        .enumerate()
        .map(|(i, a)| redact_one(a, i.checked_sub(1).map(|j| argv[j].as_str())))
        .collect()
}

/// May the calling user see the command line of a process owned by `uid`?
pub fn may_see_argv(owner: u32) -> bool {
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    me == 0 || me == owner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &[&str]) -> Vec<String> {
        argv(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            r(&["claude", "--api-key=sk-ant-abcdefghijkl", "-p", "hi"]),
            ["claude", "--api-key=<redacted>", "-p", "hi"]
        );
        assert_eq!(
            r(&["x", "--token", "abc123", "y"]),
            ["x", "--token", "<redacted>", "y"]
        );
        assert_eq!(
            r(&["env", "OPENAI_API_KEY=foo", "GITHUB_TOKEN=bar", "PATH=/bin"]),
            [
                "env",
                "OPENAI_API_KEY=<redacted>",
                "GITHUB_TOKEN=<redacted>",
                "PATH=/bin"
            ]
        );
        assert_eq!(
            r(&["curl", "-H", "Authorization: Bearer xyz", "https://h"]),
            ["curl", "-H", "Authorization: <redacted>", "https://h"]
        );
        assert_eq!(
            r(&["node", "x.js", "https://h/?k=sk-proj-0123456789abcdef&y=1"]),
            ["node", "x.js", "https://h/?k=<redacted>&y=1"]
        );
        // Nothing secret: unchanged.
        let plain = [
            "node",
            "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
            "--model",
            "x",
        ];
        assert_eq!(r(&plain), plain);
        assert_eq!(r(&["sk-short"]), ["sk-short"]);
    }
}
