//! Bounds on policy and config input, checked before the YAML parser sees
//! it: a 140 KB file nested 70,000 deep took the parser 11 s (its time
//! grows with the square of the depth), so depth is measured by a linear
//! scan first. The real files are a few KB and nest 5 levels deep.

/// Largest policy or config file read.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// Deepest nesting of collections (block and flow) accepted.
pub const MAX_DEPTH: usize = 32;
/// Most policy files in the directory.
pub const MAX_FILES: usize = 256;
/// Most match blocks of one family, tools rules of one family (or of
/// agentcgd.yaml), blocks of one tools rule.
pub const MAX_RULES: usize = 256;

/// The nesting depth of `text` is at most `MAX_DEPTH`; else the line where
/// it went deeper. Over-estimates (counts indentation levels, `- ` and `? `
/// indicators and open brackets) but never under-estimates: real YAML can
/// only nest through those.
pub fn check_depth(text: &str) -> Result<(), (usize, String)> {
    // Open block indentation columns, innermost last.
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // Inside a block scalar (`|`, `>`): lines indented more than this.
    let mut scalar_above: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let indent = line.len() - line.trim_start_matches(' ').len();
        let body = &line[indent..];
        if let Some(col) = scalar_above {
            if body.is_empty() || indent > col {
                continue;
            }
            scalar_above = None;
        }
        if flow == 0 && (body.is_empty() || body.starts_with('#')) {
            continue;
        }
        let mut depth_here = 0;
        if flow == 0 {
            while indents.last().is_some_and(|&c| c >= indent) {
                indents.pop();
            }
            indents.push(indent);
            // Compact nesting on one line: `- - - x`, `? - x`.
            let mut rest = body;
            while let Some(r) = rest
                .strip_prefix("- ")
                .or_else(|| rest.strip_prefix("? "))
                .or_else(|| (rest == "-").then_some(""))
            {
                depth_here += 1;
                rest = r.trim_start_matches(' ');
            }
        }
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        let mut max_flow = flow;
        for c in body.chars() {
            match quote {
                Some('\'') if c == '\'' => quote = None,
                Some('"') if c == '"' && prev != '\\' => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if prev == ' ' || prev == '\t' => break,
                    '\'' | '"' => quote = Some(c),
                    '[' | '{' => {
                        flow += 1;
                        max_flow = max_flow.max(flow);
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
        let depth = indents.len() + depth_here + max_flow;
        if depth > MAX_DEPTH {
            return Err((
                lineno,
                format!("nested deeper than {MAX_DEPTH} levels: refused before parsing"),
            ));
        }
        let t = body.trim_end();
        if flow == 0
            && (t.ends_with('|')
                || t.ends_with('>')
                || t.ends_with("|-")
                || t.ends_with(">-")
                || t.ends_with("|+")
                || t.ends_with(">+"))
        {
            scalar_above = Some(indent);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_files_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(check_depth(&text).is_ok(), "{}", p.display());
        }
    }

    #[test]
    fn deep_nesting_is_refused_fast_in_every_style() {
        let n = 70_000;
        let flow = format!("family: {}1{}\n", "[".repeat(n), "]".repeat(n));
        let compact = format!("match:\n{}x\n", "- ".repeat(n));
        let (line, msg) = check_depth(&flow).unwrap_err();
        assert_eq!(line, 1);
        assert!(msg.contains("deeper than 32"), "{msg}");
        assert_eq!(check_depth(&compact).unwrap_err().0, 2);
        let mut block = String::new();
        for i in 0..40 {
            block.push_str(&" ".repeat(i));
            block.push_str("a:\n");
        }
        assert!(check_depth(&block).is_err());
        let mut mapping_flow = String::from("x: ");
        mapping_flow.push_str(&"{a: ".repeat(40));
        assert!(check_depth(&mapping_flow).is_err());
        // Brackets in quotes and comments are text, a block scalar's
        // indentation is not nesting.
        let quoted = format!(
            "a: \"{}\"\nb: '{}' # {}\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert!(check_depth(&quoted).is_ok());
        let mut scalar = String::from("a: |\n");
        for i in 0..100 {
            scalar.push_str(&" ".repeat(i + 2));
            scalar.push_str("x\n");
        }
        scalar.push_str("b: 1\n");
        assert!(check_depth(&scalar).is_ok());
    }
}
