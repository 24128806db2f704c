//! Small server-rendered SVG bar charts for the status page: no script, no external resource, readable by
//! screen readers (`role="img"` labelled by its `<title>` and `<desc>`, one `<title>` per bar), and always
//! accompanied on the page by a table of the same numbers.

use std::fmt::Write as _;

/// One bar; `value: None` draws a "no data" mark.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Axis label (only the first and last are drawn).
    pub label: String,
    pub value: Option<f64>,
    /// What the bar says in words (its tooltip and accessible name).
    pub text: String,
}

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 8.0;

/// A bar chart scaled to `max` (at least 1), whose top is labelled `max_label`. `id` must be unique on the
/// page (it names the title and description elements).
pub fn bar_chart(id: &str, title: &str, desc: &str, bars: &[Bar], max: f64, max_label: &str) -> String {
    let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
    let plot_h = HEIGHT - BOTTOM - TOP;
    let slot = (WIDTH - LEFT) / bars.len().max(1) as f64;
    let bar_w = (slot * 0.8).max(1.0);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" role=\"img\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         preserveAspectRatio=\"xMinYMin meet\" aria-labelledby=\"{id}-title {id}-desc\">\
         <title id=\"{id}-title\">{}</title><desc id=\"{id}-desc\">{}</desc>",
        escape(title),
        escape(desc)
    );
    let base = TOP + plot_h;
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{WIDTH}\" y2=\"{base}\" stroke=\"#555\" stroke-width=\"1\"/>\
         <text x=\"{x}\" y=\"{y_top}\" font-size=\"11\" text-anchor=\"end\" fill=\"#333\">{}</text>\
         <text x=\"{x}\" y=\"{base}\" font-size=\"11\" text-anchor=\"end\" fill=\"#333\">0</text>",
        escape(max_label),
        x = LEFT - 4.0,
        y_top = TOP + 9.0,
    );
    for (i, bar) in bars.iter().enumerate() {
        let x = LEFT + i as f64 * slot + (slot - bar_w) / 2.0;
        match bar.value {
            Some(v) => {
                let h = (v.clamp(0.0, max) / max * plot_h).max(if v > 0.0 { 1.0 } else { 0.0 });
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"{h:.1}\" fill=\"#2b6cb0\">\
                     <title>{}</title></rect>",
                    base - h,
                    escape(&bar.text)
                );
            }
            None => {
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"2\" fill=\"#bbb\">\
                     <title>{}</title></rect>",
                    base - 2.0,
                    escape(&bar.text)
                );
            }
        }
    }
    for (bar, anchor, x) in [(bars.first(), "start", LEFT), (bars.last(), "end", WIDTH)]
        .into_iter()
        .filter_map(|(b, a, x)| Some((b?, a, x)))
    {
        let _ = write!(
            out,
            "<text x=\"{x}\" y=\"{}\" font-size=\"11\" text-anchor=\"{anchor}\" fill=\"#333\">{}</text>",
            HEIGHT - 4.0,
            escape(&bar.label)
        );
    }
    out.push_str("</svg>");
    out
}

/// XML escaping for text and attribute values; drops characters XML 1.0 does not allow.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A strict check of the XML subset these charts use: every tag closed in order, attribute values
    /// quoted, no bare `&` or `<` in text. Returns the element names in document order.
    pub(crate) fn check_well_formed(xml: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = xml;
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open])?;
            let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().ok_or(format!("</{name}> without an open element"))?;
                if top != name {
                    return Err(format!("</{name}> closes <{top}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let (name, attributes) = tag.split_once(' ').unwrap_or((tag, ""));
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("bad element name {name:?}"));
            }
            check_attributes(attributes)?;
            names.push(name.to_owned());
            if !self_closing {
                stack.push(name.to_owned());
            }
        }
        check_text(rest)?;
        if let Some(open) = stack.pop() {
            return Err(format!("<{open}> never closed"));
        }
        Ok(names)
    }

    fn check_text(text: &str) -> Result<(), String> {
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity) {
                return Err(format!("bare & in {text:?}"));
            }
        }
        if text.contains('>') { Err(format!("bare > in {text:?}")) } else { Ok(()) }
    }

    fn check_attributes(mut attributes: &str) -> Result<(), String> {
        loop {
            attributes = attributes.trim_start();
            if attributes.is_empty() {
                return Ok(());
            }
            let (name, value) =
                attributes.split_once("=\"").ok_or(format!("unquoted attribute in {attributes:?}"))?;
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':')) {
                return Err(format!("bad attribute name {name:?}"));
            }
            let end = value.find('"').ok_or("unterminated attribute value")?;
            check_text(&value[..end])?;
            attributes = &value[end + 1..];
        }
    }

    fn bars() -> Vec<Bar> {
        vec![
            Bar { label: "2026-01-01".into(), value: Some(100.0), text: "2026-01-01: 100 % up".into() },
            Bar { label: "2026-01-02".into(), value: None, text: "no data <yet> & none".into() },
            Bar { label: "2026-01-03".into(), value: Some(42.5), text: "42.5 % up".into() },
        ]
    }

    #[test]
    fn chart_is_well_formed_xml_with_an_accessible_name_and_one_titled_bar_each() {
        let svg = bar_chart("uptime", "Uptime per day", "Daily uptime, \"percent\"", &bars(), 100.0, "100 %");
        let names = check_well_formed(&svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
        assert_eq!(names[0], "svg");
        assert_eq!(names.iter().filter(|n| *n == "rect").count(), 3);
        assert_eq!(names.iter().filter(|n| *n == "title").count(), 4, "the chart's and one per bar");
        assert!(svg.contains("role=\"img\"") && svg.contains("aria-labelledby=\"uptime-title uptime-desc\""));
        assert!(svg.contains("no data &lt;yet&gt; &amp; none"), "{svg}");
        assert!(svg.contains(">2026-01-01</text>") && svg.contains(">2026-01-03</text>"));
    }

    #[test]
    fn empty_and_degenerate_charts_still_render() {
        let svg = bar_chart("x\"><script>", "t", "d", &[], 0.0, "0");
        check_well_formed(&svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
        assert!(!svg.contains("<script"));
        let huge = [Bar { label: "a".into(), value: Some(1e9), text: "big".into() }];
        let svg = bar_chart("h", "t", "d", &huge, 10.0, "10");
        assert!(svg.contains("height=\"132.0\""), "clamped to the plot: {svg}");
    }

    #[test]
    fn the_checker_rejects_broken_xml() {
        for bad in ["<a><b></a></b>", "<a>x & y</a>", "<a x=1></a>", "<a>", "</a>"] {
            assert!(check_well_formed(bad).is_err(), "{bad}");
        }
    }
}
