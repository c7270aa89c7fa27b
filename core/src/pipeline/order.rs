//! The order modules run in: each module's `needs` resolved to the modules
//! it names, then Kahn's algorithm over them. A need that names no module
//! is refused with the closest name; a cycle is refused with its path.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use toml::Spanned;

use super::error::{PipelineError, Source};
use super::raw::RawModule;

/// Kahn's algorithm over the named modules (not the expanded instances: an
/// instance graph has a cycle exactly when its module graph has one). Runs
/// in linear time and without recursion, so large generated pipelines work.
/// Returns the modules' indexes in the order they can run.
pub(super) fn topological_order(
    source: &Source,
    modules: &[(Spanned<String>, RawModule)],
) -> Result<Vec<usize>, PipelineError> {
    let needs = resolve_needs(source, modules)?;
    let mut dependents = vec![Vec::new(); modules.len()];
    let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
    for (i, list) in needs.iter().enumerate() {
        for &n in list {
            dependents[n].push(i);
        }
    }
    // Among modules whose needs are placed, the earliest in the file goes
    // first, so the plan keeps the file's order wherever the DAG allows.
    let mut free: BinaryHeap<Reverse<usize>> = (0..modules.len())
        .filter(|&i| waiting[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(modules.len());
    while let Some(Reverse(done)) = free.pop() {
        order.push(done);
        for &d in &dependents[done] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                free.push(Reverse(d));
            }
        }
    }
    if order.len() == modules.len() {
        Ok(order)
    } else {
        Err(cycle_error(source, modules, &needs, &waiting))
    }
}

/// Each module's needs as indexes, each once; a need that names no module
/// is refused.
fn resolve_needs(
    source: &Source,
    modules: &[(Spanned<String>, RawModule)],
) -> Result<Vec<Vec<usize>>, PipelineError> {
    let index: HashMap<&str, usize> = modules
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.get_ref().as_str(), i))
        .collect();
    let mut needs: Vec<Vec<usize>> = Vec::with_capacity(modules.len());
    for (name, module) in modules {
        let mut resolved = Vec::with_capacity(module.needs.len());
        for need in &module.needs {
            let Some(&i) = index.get(need.get_ref().as_str()) else {
                return Err(source
                    .error(
                        need.span(),
                        format!(
                            "module '{}' needs '{}', which is not defined",
                            name.get_ref(),
                            need.get_ref()
                        ),
                    )
                    .help(suggest(need.get_ref(), modules)));
            };
            if !resolved.contains(&i) {
                resolved.push(i);
            }
        }
        needs.push(resolved);
    }
    Ok(needs)
}

/// The refusal when Kahn's algorithm stops short. Every module left (still
/// `waiting` on a need) waits on another module left: walk those edges
/// until one repeats, and that walk is a cycle. The error points at the
/// need that closes it.
fn cycle_error(
    source: &Source,
    modules: &[(Spanned<String>, RawModule)],
    needs: &[Vec<usize>],
    waiting: &[usize],
) -> PipelineError {
    let start = (0..modules.len())
        .find(|&i| waiting[i] > 0)
        .expect("a module is left");
    let mut path = vec![start];
    let mut seen = HashMap::from([(start, 0usize)]);
    let mut current = start;
    let cycle = loop {
        let next = *needs[current]
            .iter()
            .find(|&&n| waiting[n] > 0)
            .expect("a waiting module waits on a waiting module");
        if let Some(&at) = seen.get(&next) {
            break path[at..].to_vec();
        }
        seen.insert(next, path.len());
        path.push(next);
        current = next;
    };
    let first = cycle[0];
    let second = *cycle.get(1).unwrap_or(&first);
    let names: Vec<&str> = cycle
        .iter()
        .chain(std::iter::once(&first))
        .map(|&i| modules[i].0.get_ref().as_str())
        .collect();
    let need = modules[first]
        .1
        .needs
        .iter()
        .find(|n| n.get_ref() == modules[second].0.get_ref())
        .expect("the cycle follows a need");
    let message = if cycle.len() == 1 {
        format!("module '{}' needs itself", names[0])
    } else {
        format!("needs form a cycle: {}", names.join(" -> "))
    };
    source
        .error(need.span(), message)
        .help("remove one of these needs so the modules can run in order")
}

fn suggest(missing: &str, modules: &[(Spanned<String>, RawModule)]) -> String {
    let names: Vec<&str> = modules.iter().map(|(n, _)| n.get_ref().as_str()).collect();
    let close = names
        .iter()
        .find(|n| edit_distance(n, missing) <= 2)
        .map(|n| format!("did you mean '{n}'? "))
        .unwrap_or_default();
    format!("{close}defined modules: {}", names.join(", "))
}

/// Levenshtein distance in characters: how many insertions, deletions and
/// substitutions turn `a` into `b`. For "did you mean" suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use crate::pipeline::check::{check_error, plan};
    use crate::pipeline::parse_pipeline;

    #[test]
    fn unknown_needs_and_cycles_are_refused_where_written() {
        check_error(
            "[modules.a]\nrun = \"x\"\nneeds = [\"b\"]\n",
            3,
            10,
            "needs 'b', which is not defined",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nneeds = [\"b\"]\n[modules.b]\nrun = \"y\"\nneeds = [\"a\"]\n",
            3,
            10,
            "cycle: a -> b -> a",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nneeds = [\"a\"]\n",
            3,
            10,
            "needs itself",
        );
    }

    #[test]
    fn suggests_close_names() {
        let error = parse_pipeline(
            "p.toml",
            "[modules.build]\nrun = \"x\"\n[modules.test]\nrun = \"y\"\nneeds = [\"biuld\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            error.help.as_deref(),
            Some("did you mean 'build'? defined modules: build, test")
        );
        let shown = error.to_string();
        assert!(shown.contains("5 | needs = [\"biuld\"]"), "{shown}");
        assert!(shown.contains("^^^^^^^"), "{shown}");
    }

    #[test]
    fn long_chains_plan_without_recursion() {
        let mut text = String::from("[modules.m0]\nrun = \"true\"\n");
        for i in 1..20_000 {
            text.push_str(&format!(
                "[modules.m{i}]\nrun = \"true\"\nneeds = [\"m{}\"]\n",
                i - 1
            ));
        }
        let plan = plan(&text);
        assert_eq!(plan.len(), 20_000);
        assert_eq!(plan.modules[19_999].needs, [19_998]);
    }
}
