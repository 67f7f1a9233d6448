//! The operator web UI (spec §2.8): hand-written ES modules and CSS embedded in the binary,
//! served at `/` and `/~<name>/`. A file in the config dir's `frontend/<name>/` (for `/~<name>/`)
//! or `frontend/common/` replaces the built-in file of the same name.

use std::path::{Component, Path, PathBuf};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The built-in UI: name → content. No build step: these are the files as written.
const BUILT_IN: &[(&str, &str)] = &[
    ("index.html", include_str!("../ui/index.html")),
    ("style.css", include_str!("../ui/style.css")),
    ("app.js", include_str!("../ui/app.js")),
    ("api.js", include_str!("../ui/api.js")),
    ("dom.js", include_str!("../ui/dom.js")),
    ("pages.js", include_str!("../ui/pages.js")),
    ("favicon.svg", include_str!("../ui/favicon.svg")),
];

/// The response for a UI path (`/`, `/app.js`, `/~name/`, `/~name/app.js`), or `None` when
/// the path is not a UI file (the caller answers 404).
pub async fn asset(config_dir: &Path, uri_path: &str) -> Option<Response> {
    let (frontend, file) = split(uri_path)?;
    let file = if file.is_empty() { "index.html" } else { file };
    let relative = Path::new(file);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let overrides = config_dir.join("frontend");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(name) = frontend {
        candidates.push(overrides.join(name).join(relative));
    }
    candidates.push(overrides.join("common").join(relative));
    for path in candidates {
        if let Ok(bytes) = tokio::fs::read(&path).await {
            return Some(respond(file, bytes));
        }
    }
    BUILT_IN
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, content)| respond(file, content.as_bytes().to_vec()))
}

/// `/~name/rest` → (Some(name), rest); `/rest` → (None, rest). `/~name` without the slash is
/// not a UI path: relative asset links would resolve against `/`.
fn split(uri_path: &str) -> Option<(Option<&str>, &str)> {
    let rest = uri_path.strip_prefix('/')?;
    match rest.strip_prefix('~') {
        Some(named) => {
            let (name, file) = named.split_once('/')?;
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            valid.then_some((Some(name), file))
        }
        None => Some((None, rest)),
    }
}

fn respond(file: &str, bytes: Vec<u8>) -> Response {
    let content_type = match Path::new(file).extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidate every time: an upgraded daemon must not run with a cached older UI.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_frontend_and_file() {
        assert_eq!(split("/"), Some((None, "")));
        assert_eq!(split("/app.js"), Some((None, "app.js")));
        assert_eq!(split("/~ops/"), Some((Some("ops"), "")));
        assert_eq!(split("/~ops/app.js"), Some((Some("ops"), "app.js")));
        assert_eq!(split("/~ops"), None);
        assert_eq!(split("/~../x"), None);
    }

    #[tokio::test]
    async fn overrides_win_and_unknown_files_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let common = dir.path().join("frontend/common");
        let ops = dir.path().join("frontend/ops");
        std::fs::create_dir_all(&common).unwrap();
        std::fs::create_dir_all(&ops).unwrap();
        std::fs::write(common.join("style.css"), "common").unwrap();
        std::fs::write(ops.join("style.css"), "ops").unwrap();
        let body = |response: Response| async {
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let css = asset(dir.path(), "/style.css").await.unwrap();
        assert_eq!(body(css).await, "common");
        let css = asset(dir.path(), "/~ops/style.css").await.unwrap();
        assert_eq!(body(css).await, "ops");
        let index = asset(dir.path(), "/~other/").await.unwrap();
        assert!(body(index).await.contains("<title>verwalter</title>"));
        assert!(asset(dir.path(), "/nope.js").await.is_none());
        assert!(
            asset(dir.path(), "/../frontend/common/style.css")
                .await
                .is_none()
        );
    }
}
