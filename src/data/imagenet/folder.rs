//! torchvision's `ImageFolder` layout: `SPLIT/<class>/<file>`, classes
//! indexed in sorted folder-name order, files with an image extension only.

use crate::{bail, Error, Result};
use std::path::{Path, PathBuf};

/// Extensions taken as images (case-insensitive); everything else is
/// ignored, like torchvision's `IMG_EXTENSIONS` filter. Content decides the
/// decoder, so a PNG named `.jpg` still loads.
pub const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// One split of an image folder: file paths and labels, sorted by class then
/// by file name (torchvision's order), so sample indices are stable.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<(PathBuf, u32)>,
    /// Files skipped because of their extension.
    pub ignored: usize,
}

/// Sorted names of the sub-folders of `dir` (the classes).
pub fn find_classes(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut classes = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.path().is_dir() {
            match entry.file_name().into_string() {
                Ok(name) => classes.push(name),
                Err(name) => bail!(
                    Data,
                    "{}: class folder name {name:?} is not UTF-8",
                    dir.display()
                ),
            }
        }
    }
    classes.sort();
    Ok(classes)
}

/// Whether `path` has one of the [`EXTENSIONS`].
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

impl ImageFolder {
    /// Scans `dir` with the class list `classes` (the training split's, so
    /// validation labels agree with training ones); `None` takes the sorted
    /// sub-folders of `dir`. An absent, unreadable or image-less split is an
    /// error, as is a validation class the training split does not have.
    pub fn scan(dir: &Path, classes: Option<&[String]>) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                Data,
                "image folder split {} does not exist (expected {}/<class>/<image>)",
                dir.display(),
                dir.display()
            );
        }
        let found = find_classes(dir)?;
        let classes: Vec<String> = match classes {
            None => found.clone(),
            Some(c) => {
                if let Some(extra) = found.iter().find(|f| c.binary_search(f).is_err()) {
                    bail!(
                        Data,
                        "{}: class folder {extra:?} is not a training class",
                        dir.display()
                    );
                }
                c.to_vec()
            }
        };
        if found.is_empty() {
            bail!(
                Data,
                "{} has no class folders (expected {}/<class>/<image>)",
                dir.display(),
                dir.display()
            );
        }
        let mut samples = Vec::new();
        let mut ignored = 0;
        for (label, class) in classes.iter().enumerate() {
            let cdir = dir.join(class);
            if !cdir.is_dir() {
                continue;
            }
            let mut files = Vec::new();
            let rd = std::fs::read_dir(&cdir).map_err(|e| Error::io(&cdir, e))?;
            for entry in rd {
                let path = entry.map_err(|e| Error::io(&cdir, e))?.path();
                if path.is_file() && is_image(&path) {
                    files.push(path);
                } else {
                    ignored += 1;
                }
            }
            files.sort();
            samples.extend(files.into_iter().map(|p| (p, label as u32)));
        }
        if samples.is_empty() {
            bail!(
                Data,
                "{} has no images ({} under {} class folders)",
                dir.display(),
                EXTENSIONS.join("/"),
                found.len()
            );
        }
        if samples.len() > u32::MAX as usize {
            bail!(Data, "{}: too many images", dir.display());
        }
        Ok(ImageFolder {
            root: dir.to_path_buf(),
            classes,
            samples,
            ignored,
        })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}
