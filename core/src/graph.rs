//! A picture of the plan (`muster graph`): its DAG after matrix expansion,
//! as Graphviz DOT or a mermaid flowchart, one node per module and one
//! edge per need, from need to dependent, in plan order.
//!
//! Module ids hold matrix values, which may contain almost anything but
//! `,` `=` `[` `]`: DOT gets them as quoted strings (`"` and `\`
//! escaped), mermaid as quoted labels of nodes named `m0`, `m1`, …, with
//! every character that could end a label written as an entity (`#35;`).

use std::fmt::Write as _;

use crate::Plan;

/// The plan as a DOT `digraph`.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::from("digraph muster {\n  rankdir=LR;\n  node [shape=box];\n");
    for module in &plan.modules {
        let _ = writeln!(out, "  {};", dot_id(&module.id));
    }
    for module in &plan.modules {
        for &need in &module.needs {
            let _ = writeln!(
                out,
                "  {} -> {};",
                dot_id(&plan.modules[need].id),
                dot_id(&module.id)
            );
        }
    }
    out.push_str("}\n");
    out
}

/// The plan as a mermaid `flowchart`.
pub fn mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart LR\n");
    for (index, module) in plan.modules.iter().enumerate() {
        let _ = writeln!(out, "  m{index}[\"{}\"]", mermaid_label(&module.id));
    }
    for (index, module) in plan.modules.iter().enumerate() {
        for &need in &module.needs {
            let _ = writeln!(out, "  m{need} --> m{index}");
        }
    }
    out
}

/// A DOT quoted string: `"` and `\` escaped, line breaks as `\n`.
fn dot_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 2);
    out.push('"');
    for c in id.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A mermaid label between quotes: letters, digits and plain punctuation
/// stay, anything else is an entity code (`#34;` for `"`).
fn mermaid_label(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if c.is_alphanumeric() || " _-.,=:/+@()[]".contains(c) {
            out.push(c);
        } else if !c.is_control() {
            let _ = write!(out, "#{};", u32::from(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_pipeline;

    fn plan() -> Plan {
        parse_pipeline(
            "muster.toml",
            r#"
[modules.build]
run = "make"

[modules.test]
run = "make test"
needs = ["build"]
matrix = { os = ["linux", "a \"quoted\" <b>#1</b>;"] }

[modules.ship]
run = "ship"
needs = ["test"]
"#,
        )
        .unwrap()
    }

    #[test]
    fn dot_quotes_every_id() {
        assert_eq!(
            dot(&plan()),
            "digraph muster {\n  rankdir=LR;\n  node [shape=box];\n  \"build\";\n  \
             \"test[os=linux]\";\n  \"test[os=a \\\"quoted\\\" <b>#1</b>;]\";\n  \"ship\";\n  \
             \"build\" -> \"test[os=linux]\";\n  \"build\" -> \"test[os=a \\\"quoted\\\" <b>#1</b>;]\";\n  \
             \"test[os=linux]\" -> \"ship\";\n  \"test[os=a \\\"quoted\\\" <b>#1</b>;]\" -> \"ship\";\n}\n"
        );
    }

    #[test]
    fn mermaid_names_nodes_by_index_and_escapes_labels() {
        assert_eq!(
            mermaid(&plan()),
            "flowchart LR\n  m0[\"build\"]\n  m1[\"test[os=linux]\"]\n  \
             m2[\"test[os=a #34;quoted#34; #60;b#62;#35;1#60;/b#62;#59;]\"]\n  m3[\"ship\"]\n  \
             m0 --> m1\n  m0 --> m2\n  m1 --> m3\n  m2 --> m3\n"
        );
    }
}
