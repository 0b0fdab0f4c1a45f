//! The last lines of a workload's output, bounded in lines and bytes.

use std::collections::VecDeque;

/// Keeps the last `max_lines` lines, each cut to `max_line_bytes`.
#[derive(Debug, Clone)]
pub struct LogTail {
    lines: VecDeque<String>,
    max_lines: usize,
    max_line_bytes: usize,
    partial: String,
}

impl LogTail {
    /// A tail of at most `max_lines` lines of at most `max_line_bytes` bytes.
    pub fn new(max_lines: usize, max_line_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            max_lines: max_lines.max(1),
            max_line_bytes: max_line_bytes.max(1),
            partial: String::new(),
        }
    }

    /// Adds output text (any chunking; lines are split on `\n`).
    pub fn push(&mut self, text: &str) {
        self.partial.push_str(text);
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            self.push_line(line.trim_end_matches(['\n', '\r']));
        }
        if self.partial.len() > self.max_line_bytes * 4 {
            let line = std::mem::take(&mut self.partial);
            self.push_line(&line);
        }
    }

    fn push_line(&mut self, line: &str) {
        let mut end = line.len().min(self.max_line_bytes);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        self.lines.push_back(line[..end].to_string());
        while self.lines.len() > self.max_lines {
            self.lines.pop_front();
        }
    }

    /// The tail as text, lines joined by `\n` (an unterminated last line included).
    pub fn text(&self) -> String {
        let mut all: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        if !self.partial.is_empty() {
            all.push(&self.partial);
        }
        let start = all.len().saturating_sub(self.max_lines);
        all[start..].join("\n")
    }
}

impl Default for LogTail {
    fn default() -> Self {
        Self::new(20, 512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_last_lines_across_chunks() {
        let mut t = LogTail::new(3, 100);
        t.push("a\nb");
        t.push("\nc\nd\ne");
        assert_eq!(t.text(), "c\nd\ne");
    }

    #[test]
    fn cuts_long_lines_on_char_boundaries() {
        let mut t = LogTail::new(2, 5);
        t.push("ééééé\n");
        assert_eq!(t.text(), "éé");
    }

    #[test]
    fn empty_is_empty() {
        assert_eq!(LogTail::default().text(), "");
    }
}
