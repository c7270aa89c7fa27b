//! Matrix expansion: each module, in dependency order, becomes one
//! [`PlannedModule`] per combination of its matrix values, with
//! `${matrix.KEY}` substituted and needs and consumes pointing at every
//! instance of the modules they name.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use toml::Spanned;

use super::error::{PipelineError, Source};
use super::fields::{
    consumed, cwd, duration, env_input_name, inputs, produced, retries, secret_name, shell,
    Defaults,
};
use super::raw::{MatrixValue, RawMatrix, RawModule};
use crate::gate::Approval;
use crate::plan::{Consume, ModuleIndex, Plan, PlannedModule};

/// The most instances one module's matrix may expand into.
pub const MAX_MATRIX: usize = 10_000;

/// One combination of matrix values, keys sorted.
type Combination = BTreeMap<String, String>;

/// Expands `modules` (in file order) into a plan, placing them in `order`.
pub(super) fn expand(
    source: &Source,
    defaults: &Defaults,
    modules: Vec<(Spanned<String>, RawModule)>,
    order: &[usize],
) -> Result<Plan, PipelineError> {
    let names: Vec<String> = modules.iter().map(|(n, _)| n.get_ref().clone()).collect();
    let mut slots: Vec<Option<RawModule>> = modules.into_iter().map(|(_, m)| Some(m)).collect();
    let mut placed = Placed {
        index: names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect(),
        instances: vec![Vec::new(); names.len()],
    };
    let mut planned = Vec::new();
    for &m in order {
        let raw = slots[m].take().expect("each module is placed once");
        let name = &names[m];
        let combinations = combinations(source, name, raw.matrix.as_ref())?;
        let shared = Shared::read(source, defaults, name, &raw, &placed)?;
        for combination in combinations {
            let module = instance(source, defaults, name, &raw, &shared, combination)?;
            placed.instances[m].push(planned.len());
            planned.push(module);
        }
    }
    Ok(Plan::from_ordered(planned))
}

/// The instances of the modules placed so far.
struct Placed<'a> {
    /// Named module → its position in the file.
    index: HashMap<&'a str, usize>,
    /// Instance indexes of each named module, filled as modules are placed.
    instances: Vec<Vec<ModuleIndex>>,
}

impl Placed<'_> {
    /// Every instance of the module named `name`, which is placed already
    /// (it is a need, and needs come first).
    fn of(&self, name: &str) -> &[ModuleIndex] {
        &self.instances[self.index[name]]
    }
}

/// What every instance of one module shares.
struct Shared {
    needs: Vec<ModuleIndex>,
    timeout: Duration,
    shell: Vec<String>,
    retries: u32,
    cwd: String,
    consumes: Vec<Consume>,
    /// May its result come from the cache: not opted out, and it has inputs.
    cache: bool,
    approval: Option<Approval>,
}

impl Shared {
    fn read(
        source: &Source,
        defaults: &Defaults,
        name: &str,
        raw: &RawModule,
        placed: &Placed,
    ) -> Result<Shared, PipelineError> {
        let mut needs = Vec::new();
        for need in &raw.needs {
            for &i in placed.of(need.get_ref()) {
                if !needs.contains(&i) {
                    needs.push(i);
                }
            }
        }
        let timeout = match &raw.timeout {
            Some(t) => duration(source, t)?,
            None => defaults.timeout,
        };
        let shell = match &raw.shell {
            Some(s) => shell(source, s)?,
            None => defaults.shell.clone(),
        };
        let retries = match &raw.retries {
            Some(r) => retries(source, r)?,
            None => defaults.retries,
        };
        let cwd = match &raw.cwd {
            Some(c) => cwd(source, c)?,
            None => ".".to_owned(),
        };
        let mut consumes = Vec::new();
        for written in &raw.consumes {
            let (from, glob) = consumed(source, name, written, &raw.needs)?;
            for &i in placed.of(&from) {
                consumes.push(Consume {
                    from: i,
                    glob: glob.clone(),
                });
            }
        }
        let has_inputs = match &raw.inputs {
            Some(list) => !list.get_ref().is_empty(),
            None => !defaults.inputs.is_empty(),
        };
        let cache = match &raw.cache {
            Some(written) if *written.get_ref() && !has_inputs => {
                return Err(source
                    .error(
                        written.span(),
                        format!("module '{name}' sets cache = true but has no inputs"),
                    )
                    .help("list the files its result depends on, e.g. inputs = [\"src/**\", \"Cargo.lock\"]: without inputs it runs every time"));
            }
            Some(written) => *written.get_ref(),
            None => defaults.cache && has_inputs,
        };
        let approval = match &raw.approval {
            Some(written) => Some(super::gate::approval(
                source,
                name,
                written,
                raw.run.is_none(),
            )?),
            None => None,
        };
        Ok(Shared {
            approval,
            needs,
            timeout,
            shell,
            retries,
            cwd,
            consumes,
            cache,
        })
    }
}

/// The instance of module `name` for one `combination` of its matrix.
fn instance(
    source: &Source,
    defaults: &Defaults,
    name: &str,
    raw: &RawModule,
    shared: &Shared,
    combination: Combination,
) -> Result<PlannedModule, PipelineError> {
    let sub = |text: &Spanned<String>| substitute(source, name, text, &combination);
    let mut env = defaults.env.clone();
    for (key, value) in &raw.env {
        env.insert(key.clone(), sub(value)?);
    }
    let requires = raw.requires.iter().map(sub).collect::<Result<_, _>>()?;
    let mut secrets = defaults.secrets.clone();
    for written in &raw.secrets {
        let name = secret_name(source, written, sub(written)?)?;
        if !secrets.contains(&name) {
            secrets.push(name);
        }
    }
    let produces = raw
        .produces
        .iter()
        .map(|written| produced(source, written, sub(written)?))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = match &raw.inputs {
        Some(list) => inputs(source, list, &sub)?,
        None => defaults.inputs.clone(),
    };
    let mut env_inputs = defaults.env_inputs.clone();
    for written in &raw.env_inputs {
        let name = env_input_name(source, written, sub(written)?)?;
        if !env_inputs.contains(&name) {
            env_inputs.push(name);
        }
    }
    let compensate = match &raw.compensate {
        Some(written) if written.get_ref().trim().is_empty() => {
            return Err(source
                .error(written.span(), format!("module '{name}' has an empty compensate"))
                .help("give the command that undoes what the module did, e.g. compensate = \"./rollback.sh\", or remove it"))
        }
        Some(written) => Some(sub(written)?),
        None => None,
    };
    Ok(PlannedModule {
        id: instance_id(name, &combination),
        name: name.to_owned(),
        run: match &raw.run {
            Some(run) => sub(run)?,
            None => String::new(),
        },
        shell: shared.shell.clone(),
        cwd: shared.cwd.clone(),
        env,
        needs: shared.needs.clone(),
        requires,
        secrets,
        produces,
        consumes: shared.consumes.clone(),
        timeout: shared.timeout,
        retries: shared.retries,
        inputs,
        cache: shared.cache,
        env_inputs,
        matrix: combination,
        approval: shared.approval.clone(),
        compensate,
    })
}

/// `name`, or `name[key=value,...]` for a matrix instance.
fn instance_id(name: &str, combination: &Combination) -> String {
    if combination.is_empty() {
        name.to_owned()
    } else {
        let pairs: Vec<String> = combination
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{name}[{}]", pairs.join(","))
    }
}

/// Every combination of the matrix's values (one empty one without a
/// matrix), keys sorted, the last key varying fastest.
fn combinations(
    source: &Source,
    name: &str,
    matrix: Option<&Spanned<RawMatrix>>,
) -> Result<Vec<Combination>, PipelineError> {
    let Some(matrix) = matrix else {
        return Ok(vec![Combination::new()]);
    };
    if matrix.get_ref().is_empty() {
        return Err(source
            .error(matrix.span(), format!("module '{name}' has an empty matrix"))
            .help("give each matrix key a list of values, e.g. matrix = { shard = [\"1\", \"2\"] }, or remove it"));
    }
    let size = matrix
        .get_ref()
        .values()
        .try_fold(1usize, |n, values| n.checked_mul(values.get_ref().len()))
        .unwrap_or(usize::MAX);
    if size > MAX_MATRIX {
        return Err(source
            .error(matrix.span(), format!("the matrix of '{name}' expands into {size} instances, more than the {MAX_MATRIX} allowed"))
            .help("split the module, or list fewer values"));
    }
    let mut all = vec![Combination::new()];
    for (key, values) in matrix.get_ref() {
        let values = matrix_values(source, name, key, values)?;
        all = all
            .into_iter()
            .flat_map(|combination| {
                values.iter().map(move |value| {
                    let mut next = combination.clone();
                    next.insert(key.clone(), value.clone());
                    next
                })
            })
            .collect();
    }
    Ok(all)
}

/// The values of one matrix key as text, once checked that the key and
/// each value can be part of an instance name and no value repeats.
fn matrix_values(
    source: &Source,
    name: &str,
    key: &str,
    values: &Spanned<Vec<MatrixValue>>,
) -> Result<Vec<String>, PipelineError> {
    let bad = |message: String| {
        source
            .error(values.span(), message)
            .help("matrix keys and values become part of instance names like test[os=linux,shard=1]: use each value once, without ',', '=', '[' or ']'")
    };
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || key.is_empty()
    {
        return Err(bad(format!(
            "matrix key {key:?} of module '{name}' may only hold letters, digits, '_' and '-'"
        )));
    }
    if values.get_ref().is_empty() {
        return Err(source
            .error(
                values.span(),
                format!("matrix key '{key}' of module '{name}' has no values"),
            )
            .help("list at least one value, or remove the key"));
    }
    let values: Vec<String> = values.get_ref().iter().map(MatrixValue::to_text).collect();
    for (i, value) in values.iter().enumerate() {
        if value.is_empty() || value.contains([',', '=', '[', ']']) {
            return Err(bad(format!(
                "matrix value {value:?} of key '{key}' cannot be part of an instance name"
            )));
        }
        if values[..i].contains(value) {
            return Err(bad(format!(
                "matrix key '{key}' of module '{name}' lists {value:?} twice"
            )));
        }
    }
    Ok(values)
}

/// Replaces `${matrix.KEY}`; every other `${...}` is left for the shell.
fn substitute(
    source: &Source,
    name: &str,
    text: &Spanned<String>,
    combination: &Combination,
) -> Result<String, PipelineError> {
    const OPEN: &str = "${matrix.";
    let mut out = String::new();
    let mut rest = text.get_ref().as_str();
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let Some(close) = after.find('}') else {
            return Err(source
                .error(text.span(), "unclosed ${matrix. reference")
                .help("write ${matrix.KEY}"));
        };
        let key = &after[..close];
        match combination.get(key) {
            Some(value) => out.push_str(value),
            None => {
                let known: Vec<&str> = combination.keys().map(String::as_str).collect();
                let help = if known.is_empty() {
                    format!("module '{name}' has no matrix; add matrix = {{ {key} = [...] }}")
                } else {
                    format!("the matrix of '{name}' has: {}", known.join(", "))
                };
                return Err(source
                    .error(
                        text.span(),
                        format!("unknown matrix key '{key}' in ${{matrix.{key}}}"),
                    )
                    .help(help));
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::pipeline::check::{check_error, plan};

    #[test]
    fn expands_matrix_and_orders_topologically() {
        let plan = plan(
            r#"
[defaults]
timeout = "10m"
env = { CI = "1" }

[modules.test]
run = "test --shard ${matrix.shard} ${HOME}"
needs = ["build"]
matrix = { shard = ["1", "2"], os = ["linux"] }
env = { SHARD = "${matrix.shard}" }
requires = ["os:${matrix.os}"]

[modules.build]
run = "make"
shell = "bash -e"
timeout = "90s"
retries = 2
"#,
        );
        let ids: Vec<&str> = plan.modules.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["build", "test[os=linux,shard=1]", "test[os=linux,shard=2]"]
        );
        let build = &plan.modules[0];
        assert_eq!(build.shell, ["bash", "-e", "-c"]);
        assert_eq!(build.timeout, Duration::from_secs(90));
        assert_eq!(build.retries, 2);
        let shard2 = &plan.modules[2];
        assert_eq!(shard2.run, "test --shard 2 ${HOME}");
        assert_eq!(shard2.env["SHARD"], "2");
        assert_eq!(shard2.env["CI"], "1");
        assert_eq!(shard2.requires, ["os:linux"]);
        assert_eq!(shard2.needs, [0]);
        assert_eq!(shard2.timeout, Duration::from_secs(600));
        assert_eq!(shard2.shell, ["sh", "-c"]);
        assert_eq!(plan.dependents(0), [1, 2]);
    }

    #[test]
    fn needs_on_a_matrix_module_wait_for_every_instance() {
        let plan = plan(
            r#"
[modules.a]
run = "x"
matrix = { n = [1, 2, 3] }
[modules.b]
run = "y"
needs = ["a"]
"#,
        );
        assert_eq!(plan.modules[3].id, "b");
        assert_eq!(plan.modules[3].needs, [0, 1, 2]);
        assert_eq!(plan.modules[0].id, "a[n=1]");
    }

    #[test]
    fn bad_matrices_are_refused_where_written() {
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = {}\n",
            3,
            10,
            "empty matrix",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { k = [] }\n",
            3,
            16,
            "has no values",
        );
        check_error(
            "[modules.a]\nrun = \"echo ${matrix.nope}\"\nmatrix = { k = [1] }\n",
            2,
            7,
            "unknown matrix key 'nope'",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { n = [1, \"1\"] }\n",
            3,
            16,
            "lists \"1\" twice",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { n = [\"a,b\"] }\n",
            3,
            16,
            "cannot be part of an instance name",
        );
        check_error(
            "[modules.a]\nrun = \"x\"\nmatrix = { a = [1,2,3,4,5,6,7,8,9,10], b = [1,2,3,4,5,6,7,8,9,10], c = [1,2,3,4,5,6,7,8,9,10], d = [1,2,3,4,5,6,7,8,9,10], e = [1,2] }\n",
            3,
            10,
            "expands into 20000 instances",
        );
    }

    #[test]
    fn secrets_merge_defaults_and_expand_through_the_matrix() {
        let plan = plan(
            r#"
[defaults]
secrets = ["NPM_TOKEN", "_X1", "NPM_TOKEN"]

[modules.deploy]
run = "deploy"
matrix = { env = ["PROD", "STAGING"] }
secrets = ["AWS_SECRET_ACCESS_KEY", "NPM_TOKEN", "KEY_${matrix.env}"]

[modules.lint]
run = "lint"
"#,
        );
        assert_eq!(
            plan.modules[0].secrets,
            ["NPM_TOKEN", "_X1", "AWS_SECRET_ACCESS_KEY", "KEY_PROD"]
        );
        assert_eq!(plan.modules[1].secrets[3], "KEY_STAGING");
        assert_eq!(plan.modules[2].secrets, ["NPM_TOKEN", "_X1"]);
    }

    #[test]
    fn inputs_cache_and_env_inputs_take_the_defaults_and_the_matrix() {
        let planned = plan(
            r#"
[defaults]
inputs = ["Cargo.lock", "src/**"]
env_inputs = ["RUSTFLAGS", "CC"]

[modules.build]
matrix = { arch = ["x86", "arm"] }
run = "make"
inputs = ["src/${matrix.arch}/**", "!src/**/*.md", "Cargo.lock"]
env_inputs = ["CC", "CFLAGS_${matrix.arch}"]

[modules.test]
run = "test"

[modules.deploy]
run = "deploy"
cache = false

[modules.lint]
run = "lint"
inputs = []

[modules.docs]
run = "doc"
inputs = ["docs/**"]
cache = true
"#,
        );
        let module = |id: &str| &planned.modules[planned.index_of(id).unwrap()];
        let arm = module("build[arch=arm]");
        assert_eq!(
            arm.inputs,
            ["src/arm/**", "!src/**/*.md", "Cargo.lock"],
            "the module's own list replaces the defaults"
        );
        assert_eq!(arm.env_inputs, ["RUSTFLAGS", "CC", "CFLAGS_arm"]);
        assert!(arm.cache && arm.cached());
        let test = module("test");
        assert_eq!(test.inputs, ["Cargo.lock", "src/**"]);
        assert_eq!(test.env_inputs, ["RUSTFLAGS", "CC"]);
        assert!(test.cached());
        let deploy = module("deploy");
        assert_eq!(deploy.inputs, ["Cargo.lock", "src/**"]);
        assert!(!deploy.cache && !deploy.cached());
        let lint = module("lint");
        assert!(lint.inputs.is_empty(), "inputs = [] sets none");
        assert!(!lint.cache && !lint.cached());
        assert!(module("docs").cached());

        let bare = plan("[modules.a]\nrun = \"x\"\n");
        let a = &bare.modules[0];
        assert!(a.inputs.is_empty() && a.env_inputs.is_empty());
        assert!(
            !a.cache && !a.cached(),
            "without inputs a module always runs"
        );
        let no_cache = plan(
            "[defaults]\ncache = false\ninputs = [\"x\"]\n[modules.a]\nrun = \"x\"\n[modules.b]\nrun = \"y\"\ncache = true\n",
        );
        assert!(!no_cache.modules[0].cached());
        assert!(no_cache.modules[1].cached(), "a module may opt back in");
    }

    #[test]
    fn produces_and_consumes_name_files_and_needs() {
        let plan = plan(
            r#"
[modules.build]
matrix = { arch = ["x86", "arm"] }
run = "make"
produces = ["target/${matrix.arch}/app", "?dist/**/*.tar.gz"]
[modules.docs]
run = "doc"
produces = ["site/**"]
[modules.test]
needs = ["build", "docs"]
consumes = ["build", "docs:site/*.html"]
run = "test"
"#,
        );
        assert_eq!(
            plan.modules[0].produces,
            ["target/x86/app", "?dist/**/*.tar.gz"]
        );
        let test = &plan.modules[plan.index_of("test").unwrap()];
        let from: Vec<(&str, Option<&str>)> = test
            .consumes
            .iter()
            .map(|c| (plan.modules[c.from].id.as_str(), c.glob.as_deref()))
            .collect();
        assert_eq!(
            from,
            [
                ("build[arch=x86]", None),
                ("build[arch=arm]", None),
                ("docs", Some("site/*.html"))
            ]
        );
    }
}
