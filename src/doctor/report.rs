//! What `check` and `doctor` found: facts (what answered, how fast) and findings (a sentence a
//! person acts on, with the fix), each on one layer; a verdict per layer, as text or JSON.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::json;

/// Version of the `--json` document (docs/doctor.md, "JSON schema").
pub const SCHEMA: &str = "gatewise.doctor/1";

/// The layers, in the order a request crosses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Dns,
    Tcp,
    Tls,
    Http,
    Health,
    Timeouts,
    /// Settings of a foreign proxy's config (`doctor --nginx`).
    Config,
}

impl Layer {
    pub const ALL: [Layer; 7] = [
        Layer::Dns,
        Layer::Tcp,
        Layer::Tls,
        Layer::Http,
        Layer::Health,
        Layer::Timeouts,
        Layer::Config,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layer::Dns => "DNS",
            Layer::Tcp => "TCP",
            Layer::Tls => "TLS",
            Layer::Http => "HTTP",
            Layer::Health => "health",
            Layer::Timeouts => "timeouts",
            Layer::Config => "config",
        }
    }
}

/// Something observed that is fine (or context for a finding).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    pub layer: Layer,
    pub target: String,
    pub text: String,
}

/// Something wrong, said so a person can act on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub layer: Layer,
    pub target: String,
    pub message: String,
    pub fix: String,
}

/// Everything one run learned.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// `check` or `doctor` (empty: `doctor`), for the first line.
    pub command: &'static str,
    /// What was examined: a URL, a config file.
    pub subject: String,
    pub facts: Vec<Fact>,
    pub findings: Vec<Finding>,
    /// Layers that were examined (a layer never reached has no verdict).
    pub checked: Vec<Layer>,
}

impl Report {
    pub fn fact(&mut self, layer: Layer, target: &str, text: impl Into<String>) {
        self.mark(layer);
        self.facts.push(Fact {
            layer,
            target: target.to_string(),
            text: text.into(),
        });
    }

    pub fn finding(
        &mut self,
        layer: Layer,
        target: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.mark(layer);
        self.findings.push(Finding {
            layer,
            target: target.to_string(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    pub fn mark(&mut self, layer: Layer) {
        if !self.checked.contains(&layer) {
            self.checked.push(layer);
        }
    }

    pub fn merge(&mut self, other: Report) {
        for l in other.checked {
            self.mark(l);
        }
        self.facts.extend(other.facts);
        self.findings.extend(other.findings);
    }

    /// `ok`, `finding` or `not checked`.
    pub fn verdict(&self, layer: Layer) -> &'static str {
        if self.findings.iter().any(|f| f.layer == layer) {
            "finding"
        } else if self.checked.contains(&layer) {
            "ok"
        } else {
            "not checked"
        }
    }

    /// Exit status: 0 clean, 1 findings.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.findings.is_empty())
    }

    /// Orders facts and findings by layer, then target, so output is stable.
    pub fn sort(&mut self) {
        self.facts
            .sort_by(|a, b| (a.layer, &a.target).cmp(&(b.layer, &b.target)));
        self.findings
            .sort_by(|a, b| (a.layer, &a.target).cmp(&(b.layer, &b.target)));
        self.checked.sort();
    }

    pub fn text(&self, out: &mut dyn Write) -> io::Result<()> {
        let command = if self.command.is_empty() {
            "doctor"
        } else {
            self.command
        };
        writeln!(out, "gatewise {command}: {}", self.subject)?;
        for layer in Layer::ALL {
            let verdict = self.verdict(layer);
            if layer == Layer::Config && verdict == "not checked" {
                continue;
            }
            writeln!(out, "  {:<9} {verdict}", layer.name())?;
            for f in self.facts.iter().filter(|f| f.layer == layer) {
                writeln!(out, "            {}: {}", f.target, f.text)?;
            }
        }
        if self.findings.is_empty() {
            writeln!(out, "\nNo findings.")?;
            return Ok(());
        }
        writeln!(out, "\nFindings")?;
        for (i, f) in self.findings.iter().enumerate() {
            writeln!(out, "  {}. [{}] {}", i + 1, f.layer.name(), f.message)?;
            writeln!(out, "     fix: {}", f.fix)?;
        }
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let layers: Vec<_> = Layer::ALL
            .iter()
            .map(|l| json!({"layer": l, "verdict": self.verdict(*l)}))
            .collect();
        json!({
            "schema": SCHEMA,
            "subject": self.subject,
            "layers": layers,
            "facts": self.facts,
            "findings": self.findings,
        })
    }
}
