//! Page and email templates (askama), the script the waiting page uses, and the small
//! formatting helpers they need. (The stylesheet is compiled with the theme: `branding`.)

use askama::Template;
use hyper::StatusCode;

use crate::branding::Branding;
use crate::config::Config;
use crate::web::{self, Resp};

/// What every page shows around its content: the app's name and [branding], and where
/// authbase's own URLs are.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    pub app_name: &'a str,
    pub brand: &'a Branding,
    /// `""` on authbase's host; `public_url` on a page shown on another host (the 403
    /// page on the app's host), so its links and assets still reach authbase.
    pub base: &'a str,
}

impl<'a> Frame<'a> {
    pub fn new(cfg: &'a Config) -> Frame<'a> {
        Frame {
            app_name: &cfg.webapp_name,
            brand: &cfg.derived.branding,
            base: "",
        }
    }

    /// The same frame for a page served on another host.
    pub fn elsewhere(cfg: &'a Config) -> Frame<'a> {
        Frame {
            base: cfg.public_base(),
            ..Frame::new(cfg)
        }
    }

    pub fn logo(&self) -> Option<&'a str> {
        self.pick(self.brand.logo.as_ref())
    }

    pub fn stylesheet(&self) -> Option<&'a str> {
        self.pick(self.brand.stylesheet.as_ref())
    }

    fn pick(&self, v: Option<&'a (String, String)>) -> Option<&'a str> {
        v.map(|(here, elsewhere)| {
            if self.base.is_empty() {
                here.as_str()
            } else {
                elsewhere.as_str()
            }
        })
    }
}

/// `GET /`: the sign-in form.
#[derive(Template)]
#[template(path = "index.html")]
pub struct Index<'a> {
    pub frame: Frame<'a>,
    pub email: &'a str,
    pub rd: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// `GET /` for a browser that is signed in already.
#[derive(Template)]
#[template(path = "signed_in.html")]
pub struct SignedIn<'a> {
    pub frame: Frame<'a>,
    pub email: &'a str,
    /// Where "Continue" goes, and its host as the button names it.
    pub continue_to: &'a str,
    pub continue_host: &'a str,
    /// The sign-in form for another address (keeps the return URL).
    pub switch_href: &'a str,
}

/// The waiting browser's page, after `POST /auth`.
#[derive(Template)]
#[template(path = "check_email.html")]
pub struct CheckEmail<'a> {
    pub frame: Frame<'a>,
    pub email: &'a str,
    pub match_number: &'a str,
    pub error: Option<&'a str>,
}

/// The link opened in a browser that did not ask: three choices.
#[derive(Template)]
#[template(path = "confirm.html")]
pub struct Confirm<'a> {
    pub frame: Frame<'a>,
    pub email: &'a str,
    pub requested_at: String,
    pub requester: String,
    pub action: &'a str,
    pub error: Option<&'a str>,
}

/// 403 from `/verify`, shown on the protected app's host (so its links are absolute).
#[derive(Template)]
#[template(path = "forbidden.html")]
pub struct Forbidden<'a> {
    pub frame: Frame<'a>,
    pub host: &'a str,
    pub email: Option<&'a str>,
    pub sign_in: &'a str,
}

/// Every other page: signed out, a link that no longer works, rate limited, errors.
#[derive(Template)]
#[template(path = "message.html")]
pub struct Message<'a> {
    pub frame: Frame<'a>,
    pub title: &'a str,
    pub text: &'a str,
    /// The id of a server error, also in the log.
    pub reference: Option<&'a str>,
    pub link_href: Option<&'a str>,
    pub link_label: &'a str,
}

impl<'a> Message<'a> {
    pub fn new(frame: Frame<'a>, title: &'a str, text: &'a str) -> Self {
        Message {
            frame,
            title,
            text,
            reference: None,
            link_href: None,
            link_label: "",
        }
    }
    pub fn link(mut self, href: &'a str, label: &'a str) -> Self {
        self.link_href = Some(href);
        self.link_label = label;
        self
    }
}

#[derive(Template)]
#[template(path = "email_sign_in.txt")]
pub struct SignInText<'a> {
    pub app_name: &'a str,
    pub email: &'a str,
    pub link: &'a str,
    pub code: &'a str,
    pub ttl_minutes: i64,
    pub requested_at: &'a str,
    pub requester: &'a str,
}

/// The HTML part of the sign-in email: no images, no remote anything, inline styles only.
#[derive(Template)]
#[template(path = "email_sign_in.html")]
pub struct SignInHtml<'a> {
    pub app_name: &'a str,
    /// `[branding]`'s accent as the light theme uses it (mail clients vary on dark).
    pub accent: &'a crate::branding::Accent,
    pub email: &'a str,
    pub link: &'a str,
    pub code: &'a str,
    pub ttl_minutes: i64,
    pub requested_at: &'a str,
    pub requester: &'a str,
}

/// Render a page; a template error is an internal error, never a panic.
pub fn render<T: Template>(status: StatusCode, t: &T) -> web::Result<Resp> {
    let body = t
        .render()
        .map_err(|e| crate::error::AppError::Internal(format!("template: {e}")))?;
    Ok(web::html(status, body))
}

pub const WAIT_JS: &str = include_str!("../templates/static/wait.js");

/// `2026-11-28 09:14 UTC`, from Unix seconds.
pub fn utc(ts: i64) -> String {
    let (date, secs) = civil(ts);
    format!("{date} {:02}:{:02} UTC", secs / 3600, (secs % 3600) / 60)
}

/// `2026-11-28T09:14:05Z` (RFC 3339), from Unix seconds.
pub fn rfc3339(ts: i64) -> String {
    let (date, secs) = civil(ts);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// `(YYYY-MM-DD, seconds into the day)`.
fn civil(ts: i64) -> (String, i64) {
    let days = ts.div_euclid(86400);
    let secs = ts.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}-{m:02}-{d:02}"), secs)
}

/// "Firefox on Linux (IP 192.0.2.1)": enough to recognise one's own browser.
pub fn requester(ua: &str, ip: &str) -> String {
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(k, _)| ua.contains(k))
    .map(|(_, v)| *v)
    .unwrap_or("an unknown browser");
    let os = [
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(k, _)| ua.contains(k))
    .map(|(_, v)| format!(" on {v}"))
    .unwrap_or_default();
    format!("{browser}{os} (IP address {ip})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_795_851_240), "2026-11-28 07:34 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(rfc3339(1_795_851_245), "2026-11-28T07:34:05Z");
    }

    #[test]
    fn requester_names_browser_and_os() {
        let ff = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!(
            requester(ff, "192.0.2.1"),
            "Firefox on Linux (IP address 192.0.2.1)"
        );
        assert_eq!(requester("", "::1"), "an unknown browser (IP address ::1)");
    }
}
