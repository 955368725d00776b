//! Reading manifests: multi-document YAML (or JSON) from files, directories
//! or standard input, each document kept as a JSON value for [`crate::validate`].

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A manifest document and where it came from (`file.yaml#2` for the third
/// non-empty document of a file).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `path#index` of the document, for messages.
    pub source: String,
    /// The document as written.
    pub value: Value,
}

/// Why manifests could not be read. Fatal: the input itself is unreadable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not YAML.
    #[error("{source_name}: not valid YAML: {message}")]
    Yaml {
        /// The file.
        source_name: String,
        /// The parser's message, with the location.
        message: String,
    },
}

/// Parses every document of a YAML text (`---`-separated); empty documents
/// are skipped.
pub fn parse_documents(text: &str, source_name: &str) -> Result<Vec<Document>, ManifestError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    Ok(docs
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, value)| Document {
            source: format!("{source_name}#{i}"),
            value,
        })
        .collect())
}

/// Reads a file, or every `.yaml`/`.yml`/`.json` file of a directory (sorted,
/// not recursive), or standard input for `-`.
pub fn read_path(path: &Path) -> Result<Vec<Document>, ManifestError> {
    let io = |e| ManifestError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(io)?;
        return parse_documents(&text, "<stdin>");
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            out.extend(read_path(&f)?);
        }
        return Ok(out);
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_documents(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_skips_empty_documents() {
        let docs = parse_documents("a: 1\n---\n---\nb: [x]\n", "f.yaml").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].source, "f.yaml#0");
        assert_eq!(docs[1].source, "f.yaml#1");
        assert_eq!(docs[1].value, serde_json::json!({"b": ["x"]}));
    }

    #[test]
    fn bad_yaml_names_the_file() {
        let e = parse_documents("a: [1\n", "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.yaml: not valid YAML"), "{e}");
    }
}
