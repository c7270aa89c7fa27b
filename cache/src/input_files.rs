//! The files a module reads, hashed, for its cache key: what changed in
//! them decides whether the module runs again.
//!
//! Globs are muster's artifact dialect ([`muster_core::glob::compile`]:
//! `*` stays within a folder, `**` crosses folders), matched against paths
//! relative to the module's folder, `/`-separated. A glob starting with `!`
//! drops what it matches; an exclude written `DIR/**` also keeps the walk
//! out of DIR, so `!node_modules/**` costs nothing.
//!
//! The walk never leaves the pipeline folder (the repository): a symlink
//! that is an input must point inside it, or the walk stops with an error
//! naming the link, since a key that silently ignored a file outside would
//! make a stale hit. `.git/` and `.muster/` are never inputs. Each folder
//! is read in name order, so the same tree gives the same list.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use globset::GlobMatcher;
use muster_core::glob::compile;

use crate::digest::{sha256_reader, BUFFER_BYTES};
use crate::CacheError;

/// At most this many input files per module: more means the globs take in
/// build output or dependencies.
pub const MAX_INPUT_FILES: usize = 100_000;

/// At most this many directory entries looked at in one walk, matched or
/// not, so a glob like `src/**` in a huge tree still ends.
const MAX_WALKED: usize = 2_000_000;

/// Folders this deep are a symlink loop the ancestor check missed, or a
/// tree no module should hash.
const MAX_DEPTH: usize = 256;

/// Folders that are never inputs: the repository's own store and muster's.
const SKIPPED_FOLDERS: &[&str] = &[".git", ".muster"];

/// Hashes the files under `root/cwd` that `globs` select, as sorted
/// `(path relative to cwd, SHA-256 hex)` pairs. `root` is the pipeline
/// folder; `cwd` is the module's folder relative to it (`""` or `"."` for
/// the root itself).
pub fn hash_inputs(
    root: &Path,
    cwd: &str,
    globs: &[String],
) -> Result<Vec<(String, String)>, CacheError> {
    let selection = Selection::new(globs)?;
    let root = root
        .canonicalize()
        .map_err(|e| CacheError::io(root, "open the pipeline folder", e))?;
    let folder = module_folder(&root, cwd)?;
    let mut walk = Walk {
        root: &root,
        folder: &folder,
        selection: &selection,
        found: Vec::new(),
        walked: 0,
        ancestors: Vec::new(),
    };
    walk.folder(&folder, "")?;
    let mut found = walk.found;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut buffer = vec![0u8; BUFFER_BYTES];
    found
        .into_iter()
        .map(|(path, file)| {
            let mut reader = fs::File::open(&file)
                .map_err(|e| CacheError::io(&file, "open it to hash it", e))?;
            let (digest, _) = sha256_reader(&mut reader, &mut buffer)
                .map_err(|e| CacheError::io(&file, "hash it", e))?;
            Ok((path, digest))
        })
        .collect()
}

/// The module's folder, real path, checked to be inside `root` (itself a
/// real path).
fn module_folder(root: &Path, cwd: &str) -> Result<PathBuf, CacheError> {
    let bad = || CacheError::BadCwd {
        root: root.to_owned(),
        cwd: cwd.to_owned(),
    };
    let relative = Path::new(cwd);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad());
    }
    let joined = root.join(relative);
    let folder = joined
        .canonicalize()
        .map_err(|e| CacheError::io(&joined, "open the module folder", e))?;
    if folder.starts_with(root) {
        Ok(folder)
    } else {
        Err(bad())
    }
}

/// The compiled globs.
struct Selection {
    include: Vec<GlobMatcher>,
    /// Each include glob's leading components that hold no glob syntax,
    /// and whether that is the whole glob: what a folder must agree with
    /// to hold a match.
    literal_prefixes: Vec<(Vec<String>, bool)>,
    exclude: Vec<GlobMatcher>,
    /// From excludes written `DIR/**`: folders whose whole content is out.
    pruned: Vec<GlobMatcher>,
}

impl Selection {
    fn new(globs: &[String]) -> Result<Selection, CacheError> {
        let mut selection = Selection {
            include: Vec::new(),
            literal_prefixes: Vec::new(),
            exclude: Vec::new(),
            pruned: Vec::new(),
        };
        for glob in globs {
            if let Some(excluded) = glob.strip_prefix('!') {
                selection.exclude.push(compile(excluded)?);
                if let Some(folder) = excluded.strip_suffix("/**") {
                    selection.pruned.push(compile(folder)?);
                }
            } else {
                selection.include.push(compile(glob)?);
                selection.literal_prefixes.push(literal_prefix(glob));
            }
        }
        Ok(selection)
    }

    /// True when the file at `path` is an input.
    fn selects(&self, path: &str) -> bool {
        self.include.iter().any(|g| g.is_match(path))
            && !self.exclude.iter().any(|g| g.is_match(path))
    }

    /// True when nothing under the folder `path` can be an input: an
    /// exclude takes all of it, or no include glob can reach into it.
    /// Errs towards walking: a wrong `true` would leave an input unhashed.
    fn skips_folder(&self, path: &str) -> bool {
        if self.pruned.iter().any(|g| g.is_match(path)) {
            return true;
        }
        let parts: Vec<&str> = path.split('/').collect();
        !self.literal_prefixes.iter().any(|(prefix, whole)| {
            let shared = parts.len().min(prefix.len());
            let agrees = parts[..shared] == prefix[..shared];
            // A glob that is all literal names one path: the folder must
            // be a proper ancestor of it.
            agrees && (!whole || parts.len() < prefix.len())
        })
    }
}

/// `src/gen/**/*.rs` → (`["src", "gen"]`, false); `Cargo.toml` →
/// (`["Cargo.toml"]`, true).
fn literal_prefix(glob: &str) -> (Vec<String>, bool) {
    let mut prefix = Vec::new();
    for part in glob.split('/') {
        if part.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            return (prefix, false);
        }
        prefix.push(part.to_owned());
    }
    (prefix, true)
}

/// One walk's state.
struct Walk<'a> {
    root: &'a Path,
    folder: &'a Path,
    selection: &'a Selection,
    /// (path relative to the module folder, file to read).
    found: Vec<(String, PathBuf)>,
    walked: usize,
    /// (device, inode) of the folders entered above the current one, so a
    /// symlink back up is not followed round and round.
    ancestors: Vec<(u64, u64)>,
}

impl Walk<'_> {
    /// Walks `dir` (a real path), whose path relative to the module folder
    /// is `relative` (`""` for the module folder itself).
    fn folder(&mut self, dir: &Path, relative: &str) -> Result<(), CacheError> {
        let meta = fs::metadata(dir).map_err(|e| CacheError::io(dir, "read the folder", e))?;
        let id = (meta.dev(), meta.ino());
        if self.ancestors.contains(&id) {
            return Ok(());
        }
        if self.ancestors.len() >= MAX_DEPTH {
            return Err(self.too_many("the folder depth", MAX_DEPTH));
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| CacheError::io(dir, "read the folder", e))? {
            let entry = entry.map_err(|e| CacheError::io(dir, "read the folder", e))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| CacheError::NotUtf8 { path: entry.path() })?;
            names.push(name);
        }
        self.walked += names.len();
        if self.walked > MAX_WALKED {
            return Err(self.too_many("the number of entries walked", MAX_WALKED));
        }
        names.sort();
        self.ancestors.push(id);
        for name in names {
            let path = if relative.is_empty() {
                name.clone()
            } else {
                format!("{relative}/{name}")
            };
            self.entry(&dir.join(&name), &name, &path)?;
        }
        self.ancestors.pop();
        Ok(())
    }

    /// Looks at one entry of a folder: `file` on disk, `path` relative.
    fn entry(&mut self, file: &Path, name: &str, path: &str) -> Result<(), CacheError> {
        let kind = fs::symlink_metadata(file)
            .map_err(|e| CacheError::io(file, "read the entry", e))?
            .file_type();
        if kind.is_dir() {
            if !SKIPPED_FOLDERS.contains(&name) && !self.selection.skips_folder(path) {
                self.folder(file, path)?;
            }
        } else if kind.is_file() {
            if self.selection.selects(path) {
                self.push(path, file.to_owned())?;
            }
        } else if kind.is_symlink() {
            self.symlink(file, name, path)?;
        }
        // Sockets, FIFOs and devices are never inputs: reading a FIFO
        // would wait for a writer that may never come.
        Ok(())
    }

    /// A symlink: followed only when it is an input (or may hold some) and
    /// points inside the pipeline folder.
    fn symlink(&mut self, link: &Path, name: &str, path: &str) -> Result<(), CacheError> {
        let target = match link.canonicalize() {
            Ok(target) => target,
            // A dangling link holds nothing; it matters only as a file
            // that the globs select.
            Err(_) if !self.selection.selects(path) => return Ok(()),
            Err(e) => {
                return Err(CacheError::io(
                    link,
                    "follow the symlink (exclude it with a `!` glob if its target is not meant to exist)",
                    e,
                ))
            }
        };
        let meta =
            fs::metadata(&target).map_err(|e| CacheError::io(&target, "read the entry", e))?;
        let wanted = if meta.is_dir() {
            !SKIPPED_FOLDERS.contains(&name) && !self.selection.skips_folder(path)
        } else {
            meta.is_file() && self.selection.selects(path)
        };
        if !wanted {
            return Ok(());
        }
        if !target.starts_with(self.root) {
            return Err(CacheError::SymlinkOutside {
                link: link.to_owned(),
                target,
                root: self.root.to_owned(),
            });
        }
        if meta.is_dir() {
            self.folder(&target, path)
        } else {
            self.push(path, target)
        }
    }

    fn push(&mut self, path: &str, file: PathBuf) -> Result<(), CacheError> {
        if self.found.len() >= MAX_INPUT_FILES {
            return Err(self.too_many("the number of input files", MAX_INPUT_FILES));
        }
        self.found.push((path.to_owned(), file));
        Ok(())
    }

    fn too_many(&self, what: &'static str, limit: usize) -> CacheError {
        CacheError::TooManyFiles {
            folder: self.folder.to_owned(),
            what,
            limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::digest::hex;

    fn write(root: &Path, path: &str, text: &str) {
        let file = root.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, text).unwrap();
    }

    fn globs(list: &[&str]) -> Vec<String> {
        list.iter().map(|g| g.to_string()).collect()
    }

    /// The paths `globs` select under `cwd`.
    fn check(root: &Path, cwd: &str, list: &[&str], expected: &[&str]) {
        let hashed = hash_inputs(root, cwd, &globs(list)).unwrap();
        let paths: Vec<&str> = hashed.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, expected, "globs {list:?} in {cwd:?}");
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            "app/src/main.rs",
            "app/src/lib/util.rs",
            "app/Cargo.toml",
            "app/README.md",
            "app/target/debug/out.rs",
            "app/node_modules/dep/index.js",
            "app/.git/HEAD",
            "app/.muster/cache/x",
            "other/file.rs",
        ] {
            write(dir.path(), path, path);
        }
        dir
    }

    #[test]
    fn selects_with_includes_then_excludes() {
        let dir = tree();
        let root = dir.path();
        check(root, "app", &["src/*.rs"], &["src/main.rs"]);
        check(
            root,
            "app",
            &["src/**/*.rs"],
            &["src/lib/util.rs", "src/main.rs"],
        );
        check(
            root,
            "app",
            &["**/*.rs", "!target/**"],
            &["src/lib/util.rs", "src/main.rs"],
        );
        check(
            root,
            "app",
            &["**", "!target/**", "!node_modules/**", "!*.md"],
            &["Cargo.toml", "src/lib/util.rs", "src/main.rs"],
        );
        check(root, "app", &["Cargo.toml", "missing.txt"], &["Cargo.toml"]);
        check(root, "app", &["!**"], &[]);
        check(root, "", &["**/*.rs", "!app/**"], &["other/file.rs"]);
        check(root, ".", &["other/*"], &["other/file.rs"]);
    }

    #[test]
    fn never_hashes_git_or_muster_folders() {
        let dir = tree();
        check(dir.path(), "app", &["**/HEAD", "**/x"], &[]);
    }

    #[test]
    fn digests_are_sha256_of_the_content() {
        let dir = tree();
        let hashed = hash_inputs(dir.path(), "app", &globs(&["Cargo.toml"])).unwrap();
        assert_eq!(hashed[0].1, hex(&Sha256::digest(b"app/Cargo.toml")));
    }

    #[test]
    fn a_symlink_inside_is_hashed_as_its_target() {
        let dir = tree();
        let root = dir.path();
        symlink(root.join("other/file.rs"), root.join("app/linked.rs")).unwrap();
        symlink("../other", root.join("app/otherdir")).unwrap();
        let hashed = hash_inputs(root, "app", &globs(&["*.rs", "otherdir/**"])).unwrap();
        let expected = hex(&Sha256::digest(b"other/file.rs"));
        assert_eq!(
            hashed,
            vec![
                ("linked.rs".to_owned(), expected.clone()),
                ("otherdir/file.rs".to_owned(), expected),
            ]
        );
    }

    #[test]
    fn a_symlink_outside_is_an_error_naming_it_unless_excluded() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.txt", "s");
        let dir = tree();
        let link = dir.path().join("app/src/escape.txt");
        symlink(outside.path().join("secret.txt"), &link).unwrap();
        let error = hash_inputs(dir.path(), "app", &globs(&["src/**"])).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, CacheError::SymlinkOutside { .. }), "{text}");
        assert!(
            text.contains("escape.txt") && text.contains("outside"),
            "{text}"
        );
        check(
            dir.path(),
            "app",
            &["src/**", "!**/escape.txt"],
            &["src/lib/util.rs", "src/main.rs"],
        );
        // A folder link outside, out of the globs' reach, is not an error.
        symlink(outside.path(), dir.path().join("app/deps")).unwrap();
        check(dir.path(), "app", &["src/*.rs"], &["src/main.rs"]);
        assert!(hash_inputs(dir.path(), "app", &globs(&["**/*.txt", "!src/**"])).is_err());
    }

    #[test]
    fn a_symlink_loop_ends() {
        let dir = tree();
        symlink("..", dir.path().join("app/src/up")).unwrap();
        check(
            dir.path(),
            "app",
            &["src/**/*.rs"],
            &["src/lib/util.rs", "src/main.rs"],
        );
    }

    #[test]
    fn the_module_folder_stays_inside_the_root() {
        let dir = tree();
        for cwd in ["../x", "/etc", "app/../../x"] {
            let error = hash_inputs(dir.path(), cwd, &globs(&["**"])).unwrap_err();
            assert!(matches!(error, CacheError::BadCwd { .. }), "{cwd}: {error}");
        }
        let error = hash_inputs(dir.path(), "nope", &globs(&["**"])).unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
    }

    #[test]
    fn a_bad_glob_names_the_pattern() {
        let dir = tree();
        let error = hash_inputs(dir.path(), "app", &globs(&["src/[a"])).unwrap_err();
        assert!(error.to_string().contains("'src/[a'"), "{error}");
    }

    #[test]
    fn folders_out_of_reach_are_skipped() {
        let selection =
            Selection::new(&globs(&["src/**/*.rs", "Cargo.toml", "!target/**"])).unwrap();
        assert!(!selection.skips_folder("src"));
        assert!(!selection.skips_folder("src/a/b"));
        assert!(selection.skips_folder("target"));
        assert!(selection.skips_folder("docs"));
        assert!(selection.skips_folder("Cargo.toml"));
        let everything = Selection::new(&globs(&["**/*.rs"])).unwrap();
        assert!(!everything.skips_folder("any/folder"));
        let braces = Selection::new(&globs(&["{a,b}/x"])).unwrap();
        assert!(!braces.skips_folder("a"));
    }

    #[test]
    fn too_many_files_says_to_narrow_the_globs() {
        let dir = tree();
        let mut walk = Walk {
            root: dir.path(),
            folder: dir.path(),
            selection: &Selection::new(&[]).unwrap(),
            found: vec![(String::new(), PathBuf::new()); MAX_INPUT_FILES],
            walked: 0,
            ancestors: Vec::new(),
        };
        let error = walk.push("one/more", PathBuf::new()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("narrow the module's input globs"),
            "{error}"
        );
    }
}
