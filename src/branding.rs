//! `[branding]`: the app's look on authbase's pages and in its email, set by
//! configuration without a rebuild — a logo, an accent colour, an extra stylesheet —
//! compiled once at start-up into the served stylesheet, the colours the email uses and
//! the Content-Security-Policy that admits exactly the configured origins.
//!
//! The accent colour is the operator's; legibility is ours. Each use of it is adjusted,
//! only as far as needed, to keep WCAG contrast against the background it sits on: 4.5:1
//! for text (links, button labels) and 3:1 for controls (button faces), in the light and
//! in the dark theme.

use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{err, ConfigError};

/// The stylesheet every page uses; the theme's colour variables are prepended to it.
const STYLE_CSS: &str = include_str!("../templates/static/style.css");

/// `[branding]` as written in the file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrandingConfig {
    /// Shown above every page: an absolute http(s) URL, or a path on authbase's host.
    pub logo_url: String,
    /// `#rgb` or `#rrggbb`: buttons, links and the focus ring.
    pub accent_color: String,
    /// Loaded after authbase's stylesheet: an absolute http(s) URL, or a path.
    pub stylesheet_url: String,
}

impl Default for BrandingConfig {
    fn default() -> Self {
        BrandingConfig {
            logo_url: String::new(),
            accent_color: DEFAULT_ACCENT.into(),
            stylesheet_url: String::new(),
        }
    }
}

pub const DEFAULT_ACCENT: &str = "#0b57d0";

/// An sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub [u8; 3]);

pub const WHITE: Rgb = Rgb([255, 255, 255]);
pub const BLACK: Rgb = Rgb([0, 0, 0]);

impl Rgb {
    /// `#rgb` or `#rrggbb`, either case.
    pub fn parse(s: &str) -> Option<Rgb> {
        let hex = s.strip_prefix('#')?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let digit = |i: usize| u8::from_str_radix(&hex[i..i + 1], 16).ok();
        match hex.len() {
            3 => Some(Rgb([digit(0)? * 17, digit(1)? * 17, digit(2)? * 17])),
            6 => {
                let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
                Some(Rgb([byte(0)?, byte(2)?, byte(4)?]))
            }
            _ => None,
        }
    }

    pub fn hex(self) -> String {
        let [r, g, b] = self.0;
        format!("#{r:02x}{g:02x}{b:02x}")
    }

    /// WCAG 2 relative luminance.
    pub fn luminance(self) -> f64 {
        let lin = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        let [r, g, b] = self.0;
        0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    }

    /// WCAG 2 contrast ratio, 1 to 21.
    pub fn contrast(self, other: Rgb) -> f64 {
        let (a, b) = (self.luminance(), other.luminance());
        (a.max(b) + 0.05) / (a.min(b) + 0.05)
    }

    /// `t` of the way from `self` to `to` (0 = self, 1 = to).
    fn mix(self, to: Rgb, t: f64) -> Rgb {
        let ch = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
        Rgb([
            ch(self.0[0], to.0[0]),
            ch(self.0[1], to.0[1]),
            ch(self.0[2], to.0[2]),
        ])
    }

    /// The least change towards black or white (whichever `bg` contrasts with) that gives
    /// at least `ratio` against `bg`; `self` when it already does.
    pub fn legible_on(self, bg: Rgb, ratio: f64) -> Rgb {
        let to = if bg.luminance() > 0.18 { BLACK } else { WHITE };
        (0..=100)
            .map(|i| self.mix(to, f64::from(i) / 100.0))
            .find(|c| c.contrast(bg) >= ratio)
            .unwrap_or(to)
    }

    /// Black or white, whichever reads better on `self` (always at least 4.58:1).
    pub fn text_on(self) -> Rgb {
        if self.contrast(WHITE) >= self.contrast(BLACK) {
            WHITE
        } else {
            BLACK
        }
    }
}

/// Text needs 4.5:1 (WCAG 1.4.3); a little more, so rounding in a checker never tips it.
const TEXT: f64 = 4.6;
/// Controls need 3:1 against what is next to them (WCAG 1.4.11).
const CONTROL: f64 = 3.1;

/// The neutral colours of one theme.
struct Base {
    bg: Rgb,
    card: Rgb,
    fg: Rgb,
    muted: Rgb,
    border: Rgb,
    err: Rgb,
}

const LIGHT: Base = Base {
    bg: Rgb([0xf3, 0xf4, 0xf6]),
    card: WHITE,
    fg: Rgb([0x1d, 0x1d, 0x1f]),
    muted: Rgb([0x52, 0x55, 0x5b]),
    border: Rgb([0x7a, 0x7d, 0x84]),
    err: Rgb([0xb3, 0x26, 0x1e]),
};

const DARK: Base = Base {
    bg: Rgb([0x12, 0x12, 0x14]),
    card: Rgb([0x1e, 0x1e, 0x22]),
    fg: Rgb([0xe8, 0xe8, 0xea]),
    muted: Rgb([0xb0, 0xb0, 0xb8]),
    border: Rgb([0x8a, 0x8a, 0x93]),
    err: Rgb([0xf2, 0xb8, 0xb5]),
};

/// The accent's uses in one theme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accent {
    /// Button faces: the brand colour exactly.
    pub button: Rgb,
    /// Button labels (black or white, whichever reads better on the face).
    pub on_button: Rgb,
    /// The button's edge: the face, darkened or lightened until the control stands out
    /// from the card (a pale yellow button on white gets a darker rim).
    pub edge: Rgb,
    /// Links, secondary buttons, the focus ring.
    pub link: Rgb,
}

impl Accent {
    fn on(accent: Rgb, base: &Base) -> Accent {
        Accent {
            button: accent,
            on_button: accent.text_on(),
            edge: accent.legible_on(base.card, CONTROL),
            link: accent.legible_on(base.card, TEXT),
        }
    }
}

/// `[branding]`, compiled.
#[derive(Clone)]
pub struct Branding {
    /// The logo as pages on authbase's host use it, and as pages on other hosts (the 403
    /// page is shown on the app's host) use it.
    pub logo: Option<(String, String)>,
    /// The extra stylesheet, likewise.
    pub stylesheet: Option<(String, String)>,
    pub light: Accent,
    pub dark: Accent,
    /// The whole stylesheet served at `/static/style.css`: theme, then the rules.
    pub css: bytes::Bytes,
    /// A short hash of `css`, for `style.css?v=…`: a changed theme is fetched anew.
    pub css_version: String,
    /// The Content-Security-Policy of authbase's pages.
    pub csp: HeaderValue,
    /// The Content-Security-Policy of authbase's pages shown on other hosts.
    pub csp_elsewhere: HeaderValue,
}

/// Without the stylesheet itself (its version names it).
impl std::fmt::Debug for Branding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Branding")
            .field("logo", &self.logo)
            .field("stylesheet", &self.stylesheet)
            .field("light", &self.light)
            .field("dark", &self.dark)
            .field("css_version", &self.css_version)
            .field("csp", &self.csp)
            .field("csp_elsewhere", &self.csp_elsewhere)
            .finish_non_exhaustive()
    }
}

impl Default for Branding {
    fn default() -> Self {
        Branding::compile(&BrandingConfig::default(), "", "").expect("the defaults compile")
    }
}

/// A URL the pages load: where each kind of page finds it, and its origin when that is
/// not authbase's own.
struct Source {
    here: String,
    elsewhere: String,
    foreign_origin: Option<String>,
}

fn source(
    key: &str,
    v: &str,
    public_base: &str,
    public_origin: &str,
) -> Result<Option<Source>, ConfigError> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    // These travel in HTML attributes and in the CSP header: nothing that could end
    // either, or smuggle a second source into the policy.
    if v.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'<>;,\\`".contains(c))
    {
        return Err(err(
            key,
            format!("`{v}` contains a character a URL here may not have (spaces, quotes, `;`, `,`, `\\`)"),
        ));
    }
    if v.starts_with('/') {
        if v.starts_with("//") {
            return Err(err(
                key,
                format!("`{v}` is scheme-relative; write https://… or a path like /brand/logo.svg"),
            ));
        }
        return Ok(Some(Source {
            here: v.to_string(),
            elsewhere: format!("{public_base}{v}"),
            foreign_origin: None,
        }));
    }
    let u = url::Url::parse(v).map_err(|_| {
        err(
            key,
            format!("`{v}` is neither an absolute URL nor a path starting with /"),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(err(
            key,
            format!("`{v}` must be an http:// or https:// URL, or a path"),
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(err(key, "must not contain user:password@"));
    }
    if public_origin.starts_with("https:") && u.scheme() != "https" {
        return Err(err(
            key,
            format!("`{v}` is http:// but public_url is https://: browsers would block it as mixed content"),
        ));
    }
    let origin = u.origin().ascii_serialization();
    let s = u.as_str().to_string();
    Ok(Some(Source {
        here: s.clone(),
        elsewhere: s,
        foreign_origin: (origin != public_origin).then_some(origin),
    }))
}

impl Branding {
    /// Check `[branding]` (errors name the key) and compile it for a server whose pages
    /// live at `public_base` (origin `public_origin`).
    pub fn compile(
        c: &BrandingConfig,
        public_base: &str,
        public_origin: &str,
    ) -> Result<Branding, ConfigError> {
        let accent = Rgb::parse(c.accent_color.trim()).ok_or_else(|| {
            err(
                "branding.accent_color",
                format!(
                    "`{}` is not a colour like \"#0b57d0\" or \"#07c\"",
                    c.accent_color
                ),
            )
        })?;
        let logo = source("branding.logo_url", &c.logo_url, public_base, public_origin)?;
        let sheet = source(
            "branding.stylesheet_url",
            &c.stylesheet_url,
            public_base,
            public_origin,
        )?;
        let light = Accent::on(accent, &LIGHT);
        let dark = Accent::on(accent, &DARK);
        let css = format!(
            "{}@media (prefers-color-scheme: dark) {{\n{}}}\n{STYLE_CSS}",
            theme_vars(&LIGHT, &light),
            theme_vars(&DARK, &dark)
        );
        let css_version = crate::secrets::hex(&Sha256::digest(css.as_bytes())[..6]);

        // Exactly the configured origins, each only where it is needed: the logo as an
        // image; the stylesheet's origin for styles and for the fonts and images it
        // references.
        let logo_origin = logo.as_ref().and_then(|s| s.foreign_origin.clone());
        let sheet_origin = sheet.as_ref().and_then(|s| s.foreign_origin.clone());
        let extra = |list: &[&Option<String>]| -> String {
            let mut out = String::new();
            for o in list.iter().filter_map(|o| o.as_deref()) {
                if !out.split(' ').any(|x| x == o) {
                    out.push(' ');
                    out.push_str(o);
                }
            }
            out
        };
        let fonts = match &sheet_origin {
            Some(o) => format!(" font-src {o};"),
            None => String::new(),
        };
        let style_extra = extra(&[&sheet_origin]);
        let img_extra = extra(&[&logo_origin, &sheet_origin]);
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'{style_extra}; \
             img-src 'self' data:{img_extra};{fonts} connect-src 'self'; base-uri 'none'; \
             frame-ancestors 'none'"
        );
        // On another host (the 403 page on the app's host) "self" is the app: name
        // authbase's origin instead, and allow no script at all.
        let own = public_origin;
        let csp_elsewhere = format!(
            "default-src 'none'; style-src {own}{style_extra}; img-src {own} data:{img_extra};{fonts} \
             form-action {own}; base-uri 'none'; frame-ancestors 'none'"
        );
        let header = |s: String| {
            HeaderValue::from_str(&s).map_err(|_| {
                err(
                    "branding",
                    "the URLs do not make a valid Content-Security-Policy",
                )
            })
        };
        Ok(Branding {
            logo: logo.map(|s| (s.here, s.elsewhere)),
            stylesheet: sheet.map(|s| (s.here, s.elsewhere)),
            light,
            dark,
            css: bytes::Bytes::from(css),
            css_version,
            csp: header(csp)?,
            csp_elsewhere: header(csp_elsewhere)?,
        })
    }
}

fn theme_vars(b: &Base, a: &Accent) -> String {
    format!(
        ":root {{ --bg: {}; --card: {}; --fg: {}; --muted: {}; --border: {}; --err: {}; \
         --accent: {}; --on-accent: {}; --accent-edge: {}; --link: {}; }}\n",
        b.bg.hex(),
        b.card.hex(),
        b.fg.hex(),
        b.muted.hex(),
        b.border.hex(),
        b.err.hex(),
        a.button.hex(),
        a.on_button.hex(),
        a.edge.hex(),
        a.link.hex(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(toml: &str) -> Result<Branding, ConfigError> {
        let c: BrandingConfig = toml::from_str(toml).unwrap();
        Branding::compile(&c, "https://auth.example.com", "https://auth.example.com")
    }

    #[test]
    fn colours_parse_and_measure() {
        assert_eq!(Rgb::parse("#07C"), Some(Rgb([0, 0x77, 0xcc])));
        assert_eq!(Rgb::parse("#0b57d0").unwrap().hex(), "#0b57d0");
        for bad in ["0b57d0", "#0b57d", "#ggg", "#0b57d0ff", "blue", "#", ""] {
            assert_eq!(Rgb::parse(bad), None, "{bad}");
        }
        assert!((WHITE.contrast(BLACK) - 21.0).abs() < 1e-9);
        // The WCAG example: #767676 on white is just above 4.5:1.
        let grey = Rgb::parse("#767676").unwrap();
        assert!((grey.contrast(WHITE) - 4.54).abs() < 0.01);
    }

    #[test]
    fn every_accent_stays_legible_in_both_themes() {
        // Dark, light, saturated, grey, and the extremes.
        for hex in [
            "#0b57d0", "#ffcc00", "#ffffff", "#000000", "#808080", "#e91e63", "#00ff00", "#1e1e22",
            "#f3f4f6",
        ] {
            let accent = Rgb::parse(hex).unwrap();
            for (base, a) in [
                (&LIGHT, Accent::on(accent, &LIGHT)),
                (&DARK, Accent::on(accent, &DARK)),
            ] {
                assert!(a.link.contrast(base.card) >= 4.5, "{hex}: link {a:?}");
                assert!(
                    a.edge.contrast(base.card) >= 3.0,
                    "{hex}: button edge {a:?}"
                );
                assert!(a.on_button.contrast(a.button) >= 4.5, "{hex}: label {a:?}");
            }
        }
        // An accent that is legible already is used as it is.
        let a = Accent::on(Rgb::parse("#0b57d0").unwrap(), &LIGHT);
        assert_eq!(
            (a.button.hex(), a.link.hex()),
            ("#0b57d0".into(), "#0b57d0".into())
        );
        assert_eq!(a.on_button, WHITE);
        // The neutral palette itself.
        for b in [&LIGHT, &DARK] {
            assert!(b.fg.contrast(b.card) >= 7.0);
            assert!(b.muted.contrast(b.card) >= 4.5 && b.err.contrast(b.card) >= 4.5);
            assert!(b.border.contrast(b.card) >= 3.0);
        }
    }

    #[test]
    fn csp_names_exactly_the_configured_origins() {
        let b = compile("").unwrap();
        let csp = b.csp.to_str().unwrap();
        assert!(csp.contains("style-src 'self';"), "{csp}");
        assert!(csp.contains("img-src 'self' data:;"), "{csp}");
        assert!(!csp.contains("font-src"), "{csp}");
        assert!(b.logo.is_none() && b.stylesheet.is_none());

        let b = compile(
            "logo_url = \"https://cdn.example.net/brand/logo.svg\"\n\
             stylesheet_url = \"https://static.example.org:8443/brand.css?v=2\"\n",
        )
        .unwrap();
        let csp = b.csp.to_str().unwrap();
        assert!(
            csp.contains("style-src 'self' https://static.example.org:8443;"),
            "{csp}"
        );
        assert!(
            csp.contains(
                "img-src 'self' data: https://cdn.example.net https://static.example.org:8443;"
            ),
            "{csp}"
        );
        assert!(
            csp.contains("font-src https://static.example.org:8443;"),
            "{csp}"
        );
        assert!(
            csp.contains("script-src 'self';"),
            "scripts stay our own: {csp}"
        );
        let elsewhere = b.csp_elsewhere.to_str().unwrap();
        assert!(
            elsewhere
                .contains("style-src https://auth.example.com https://static.example.org:8443;"),
            "{elsewhere}"
        );
        assert!(!elsewhere.contains("script-src"), "{elsewhere}");

        // A path, or a URL on authbase's own origin, needs nothing more than 'self'.
        let b = compile(
            "logo_url = \"/brand/logo.png\"\nstylesheet_url = \"https://auth.example.com/b.css\"\n",
        )
        .unwrap();
        let csp = b.csp.to_str().unwrap();
        assert!(
            csp.contains("style-src 'self';") && csp.contains("img-src 'self' data:;"),
            "{csp}"
        );
        assert_eq!(
            b.logo,
            Some((
                "/brand/logo.png".into(),
                "https://auth.example.com/brand/logo.png".into()
            ))
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("accent_color = \"blue\"", "branding.accent_color"),
            ("accent_color = \"#12345\"", "branding.accent_color"),
            ("logo_url = \"//evil.example/x.png\"", "branding.logo_url"),
            ("logo_url = \"javascript:alert(1)\"", "branding.logo_url"),
            ("logo_url = \"logo.png\"", "branding.logo_url"),
            (
                "logo_url = \"https://a.example/x.png; script-src *\"",
                "branding.logo_url",
            ),
            (
                "logo_url = \"https://a.example/x\\\"onerror=x\"",
                "branding.logo_url",
            ),
            (
                "logo_url = \"https://u:p@a.example/x.png\"",
                "branding.logo_url",
            ),
            (
                "stylesheet_url = \"http://cdn.example/x.css\"",
                "branding.stylesheet_url",
            ),
            (
                "stylesheet_url = \"data:text/css,body{}\"",
                "branding.stylesheet_url",
            ),
        ] {
            let e = compile(toml).expect_err(toml);
            assert_eq!(e.key, key, "{toml}: {e}");
        }
    }

    #[test]
    fn the_stylesheet_carries_the_theme_and_a_version() {
        let a = compile("").unwrap();
        let b = compile("accent_color = \"#ffcc00\"").unwrap();
        let css = std::str::from_utf8(&b.css).unwrap();
        assert!(css.starts_with(":root {"), "{css}");
        assert!(css.contains("prefers-color-scheme: dark"));
        assert!(
            css.contains("--accent: #ffcc00; --on-accent: #000000;"),
            "{css}"
        );
        assert_ne!(a.css_version, b.css_version);
        assert_eq!(a.css_version.len(), 12);
    }
}
