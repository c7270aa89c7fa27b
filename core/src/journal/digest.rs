//! Digests of module definitions: a resume keeps a succeeded module only
//! when its definition is what it was, and says which part changed when
//! it is not. Each part (the command, the env, ...) has its own digest, so
//! "its command changed" can be told from "its env changed".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plan::{Plan, PlannedModule};

/// A module's definition as digests: the whole, and each part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleDigest {
    pub id: String,
    /// Lower-case hex SHA-256 over every part's digest.
    pub digest: String,
    /// Part name (`command`, `shell`, `cwd`, `env`, `matrix`, `needs`,
    /// `requires`, `secrets`, `produces`, `consumes`, `timeout`,
    /// `retries`, `inputs`, `cache`, `envInputs`, `approval`, `compensate`) → the first 16 hex digits
    /// of its SHA-256. `inputs` and `cache` are left out while the module
    /// has no inputs, `envInputs` while it has none, `approval` without a
    /// gate: a module that does not
    /// use them keeps the digest it had before they existed, so a journal
    /// written by an earlier muster still matches it.
    pub parts: BTreeMap<String, String>,
    /// The modules it needs, by id: what the dashboard draws the DAG
    /// from. Not part of the digest (the `needs` part is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
}

/// The digests of every module, in plan order.
pub fn module_digests(plan: &Plan) -> Vec<ModuleDigest> {
    plan.modules
        .iter()
        .map(|module| module_digest(plan, module))
        .collect()
}

/// One digest over the whole plan.
pub fn plan_digest(digests: &[ModuleDigest]) -> String {
    let mut hasher = Sha256::new();
    for module in digests {
        field(&mut hasher, &module.id);
        field(&mut hasher, &module.digest);
    }
    format!("{:x}", hasher.finalize())
}

fn module_digest(plan: &Plan, module: &PlannedModule) -> ModuleDigest {
    let id_of = |i: &usize| plan.modules[*i].id.as_str();
    let mut parts = BTreeMap::new();
    let mut part = |name: &str, values: Vec<&str>| {
        let mut hasher = Sha256::new();
        for value in values {
            field(&mut hasher, value);
        }
        parts.insert(
            name.to_owned(),
            format!("{:x}", hasher.finalize())[..16].to_owned(),
        );
    };
    part("command", vec![&module.run]);
    part("shell", module.shell.iter().map(String::as_str).collect());
    part("cwd", vec![&module.cwd]);
    part("env", pairs(&module.env));
    part("matrix", pairs(&module.matrix));
    part("needs", module.needs.iter().map(id_of).collect());
    part(
        "requires",
        module.requires.iter().map(String::as_str).collect(),
    );
    part(
        "secrets",
        module.secrets.iter().map(String::as_str).collect(),
    );
    part(
        "produces",
        module.produces.iter().map(String::as_str).collect(),
    );
    let consumes: Vec<String> = module
        .consumes
        .iter()
        .map(|c| {
            let glob = c.glob.as_ref().map_or("", |g| g.as_str());
            format!("{}\u{0}{glob}", id_of(&c.from))
        })
        .collect();
    part("consumes", consumes.iter().map(String::as_str).collect());
    let timeout = module.timeout.as_millis().to_string();
    part("timeout", vec![&timeout]);
    let retries = module.retries.to_string();
    part("retries", vec![&retries]);
    if !module.inputs.is_empty() {
        part("inputs", module.inputs.iter().map(String::as_str).collect());
        part("cache", vec![if module.cache { "true" } else { "false" }]);
    }
    if !module.env_inputs.is_empty() {
        part(
            "envInputs",
            module.env_inputs.iter().map(String::as_str).collect(),
        );
    }
    if let Some(gate) = &module.approval {
        let timeout = gate.timeout.as_millis().to_string();
        let mut values = vec![
            gate.prompt.as_str(),
            &timeout,
            gate.on_timeout.word(),
            if gate.gate_only { "gate only" } else { "runs" },
        ];
        for list in [&gate.approvers, &gate.inputs, &gate.not] {
            values.push("\u{1}");
            values.extend(list.iter().map(String::as_str));
        }
        part("approval", values);
    }
    if let Some(compensate) = &module.compensate {
        part("compensate", vec![compensate]);
    }
    let mut whole = Sha256::new();
    for (name, digest) in &parts {
        field(&mut whole, name);
        field(&mut whole, digest);
    }
    ModuleDigest {
        id: module.id.clone(),
        digest: format!("{:x}", whole.finalize()),
        parts,
        needs: module.needs.iter().map(|i| id_of(i).to_owned()).collect(),
    }
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<&str> {
    map.iter()
        .flat_map(|(k, v)| [k.as_str(), v.as_str()])
        .collect()
}

/// Length-prefixed, so `["ab","c"]` and `["a","bc"]` differ.
fn field(hasher: &mut Sha256, value: &str) {
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value.as_bytes());
}

impl ModuleDigest {
    /// The parts that differ from `earlier`, by name, in order.
    pub fn changed_parts<'a>(&'a self, earlier: &'a ModuleDigest) -> Vec<&'a str> {
        self.parts
            .iter()
            .filter(|(name, digest)| earlier.parts.get(*name) != Some(digest))
            .map(|(name, _)| name.as_str())
            .chain(
                earlier
                    .parts
                    .keys()
                    .filter(|name| !self.parts.contains_key(*name))
                    .map(String::as_str),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse_pipeline;

    fn digests(text: &str) -> Vec<ModuleDigest> {
        module_digests(&parse_pipeline("t.toml", text).unwrap())
    }

    #[test]
    fn a_changed_part_changes_the_digest_and_is_named() {
        let before =
            digests("[modules.a]\nrun = \"make\"\n[modules.b]\nrun = \"test\"\nneeds = [\"a\"]\n");
        let same =
            digests("[modules.a]\nrun = \"make\"\n[modules.b]\nrun = \"test\"\nneeds = [\"a\"]\n");
        assert_eq!(before, same);
        assert_eq!(plan_digest(&before), plan_digest(&same));
        let after = digests(
            "[modules.a]\nrun = \"make all\"\n[modules.b]\nrun = \"test\"\nneeds = [\"a\"]\n",
        );
        assert_ne!(before[0].digest, after[0].digest);
        assert_eq!(after[0].changed_parts(&before[0]), ["command"]);
        assert_eq!(before[1], after[1], "b's own definition did not change");
        let env = digests("[modules.a]\nrun = \"make\"\nenv = { X = \"1\" }\n");
        assert_eq!(env[0].changed_parts(&before[0]), ["env"]);
    }

    #[test]
    fn cache_settings_are_parts_a_resume_notices() {
        let plain = digests("[modules.a]\nrun = \"make\"\n");
        let inputs = digests("[modules.a]\nrun = \"make\"\ninputs = [\"src/**\"]\n");
        assert_eq!(inputs[0].changed_parts(&plain[0]), ["cache", "inputs"]);
        assert_eq!(plain[0].changed_parts(&inputs[0]), ["cache", "inputs"]);
        let more = digests("[modules.a]\nrun = \"make\"\ninputs = [\"src/**\", \"!*.md\"]\n");
        assert_eq!(more[0].changed_parts(&inputs[0]), ["inputs"]);
        let opted_out =
            digests("[modules.a]\nrun = \"make\"\ninputs = [\"src/**\"]\ncache = false\n");
        assert_eq!(opted_out[0].changed_parts(&inputs[0]), ["cache"]);
        let env = digests("[modules.a]\nrun = \"make\"\nenv_inputs = [\"RUSTFLAGS\"]\n");
        assert_eq!(env[0].changed_parts(&plain[0]), ["envInputs"]);
        let other = digests("[modules.a]\nrun = \"make\"\nenv_inputs = [\"CC\"]\n");
        assert_eq!(other[0].changed_parts(&env[0]), ["envInputs"]);
    }

    /// A journal written by an earlier muster must still match a module
    /// whose definition did not change: a new part is left out of the
    /// digest while the module does not use it. Changing this digest makes
    /// every resume run every module again.
    #[test]
    fn the_digest_of_a_plain_module_is_stable_across_versions() {
        let plain = digests("[modules.a]\nrun = \"make\"\nneeds = []\n");
        assert_eq!(
            plain[0].digest,
            "6494afe82ce7c3df739d2e7ebc5fbce950807bfe6ce173f902866297927dc56d"
        );
    }
}
