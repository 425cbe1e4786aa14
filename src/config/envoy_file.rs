//! Envoy domain files: every file `envoy.paths` names, each in envoyproxy/ratelimit's format,
//! into `envoy::Domains`.

use std::collections::HashMap;
use std::path::Path;

use super::schema;
use crate::check::FailureMode;
use crate::request::Attr;

/// Loads every file of `envoy.paths` (a directory: its `.yaml` and `.yml` files, in name order).
pub(super) fn domains(e: &schema::Envoy, problems: &mut Vec<String>) -> crate::envoy::Domains {
    let mut files = Vec::new();
    for (i, path) in e.paths.iter().enumerate() {
        let p = Path::new(path);
        match super::load::yaml_files_in(p) {
            Ok(found) => files.extend(found),
            Err(_) if p.is_file() => files.push(p.to_path_buf()),
            Err(e) => problems.push(format!("envoy.paths[{i}]: cannot read {path:?}: {e}")),
        }
    }
    let mut by_name = HashMap::new();
    for file in files {
        let origin = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Err(e) => problems.push(format!("{origin}: cannot read: {e}")),
            Ok(text) => match crate::envoy::domain::parse(&text, &origin) {
                Ok(domain) => {
                    if by_name.contains_key(&domain.name) {
                        problems.push(format!("{origin}: duplicate domain {:?}", domain.name));
                    } else {
                        by_name.insert(domain.name.clone(), domain);
                    }
                }
                Err(file_problems) => problems.extend(file_problems),
            },
        }
    }
    let attributes = e.attributes.iter().map(|(key, attr)| (key.clone(), Attr::parse(attr))).collect();
    crate::envoy::Domains {
        by_name,
        count_denied: e.count_denied,
        attributes,
        default_failure: FailureMode::Local,
    }
}
