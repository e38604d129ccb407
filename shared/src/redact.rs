//! The one URL redactor: what of a URL a log line, an error message or an API reader may see.

/// How much of a URL to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Everything but the user name and password: an entry's source URL as the API shows it,
    /// a connection URL in an error message.
    WithoutCredentials,
    /// Scheme, host, port and path, with `?…` for a query: for logs, where a query may carry
    /// a presigned URL's signature.
    ForLogs,
}

/// `url` as `show` allows; text that is not a URL is shown as `<not a valid URL>` in logs and
/// unchanged otherwise (it holds no credentials a parser would have found).
pub fn url(url: &str, show: Show) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return match show {
            Show::ForLogs => "<not a valid URL>".into(),
            Show::WithoutCredentials => url.to_string(),
        };
    };
    let had_credentials = !parsed.username().is_empty() || parsed.password().is_some();
    if had_credentials {
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
    }
    match show {
        Show::WithoutCredentials if !had_credentials => url.to_string(),
        Show::WithoutCredentials => parsed.to_string(),
        Show::ForLogs => {
            parsed.set_fragment(None);
            let had_query = parsed.query().is_some_and(|q| !q.is_empty());
            parsed.set_query(None);
            let mut text = parsed.to_string();
            if had_query {
                text.push_str("?…");
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_and_logs_lose_the_query() {
        let source = "https://user:secret@archive.example:8443/v/a.mp4?X-Amz-Signature=abc#t=1";
        assert_eq!(
            url(source, Show::ForLogs),
            "https://archive.example:8443/v/a.mp4?…"
        );
        assert_eq!(
            url(source, Show::WithoutCredentials),
            "https://archive.example:8443/v/a.mp4?X-Amz-Signature=abc#t=1"
        );
        assert_eq!(
            url("https://archive.example/a.mp4", Show::WithoutCredentials),
            "https://archive.example/a.mp4"
        );
        assert_eq!(
            url(
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                Show::WithoutCredentials
            ),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(url("no url", Show::ForLogs), "<not a valid URL>");
        assert_eq!(
            url("host=db user=x", Show::WithoutCredentials),
            "host=db user=x"
        );
    }
}
