//! PURE: AWS Batch parameter substitution. `Ref::name` in a job's command and args is
//! replaced by the value of parameter `name`: the job's `parameters` over its
//! definition's. A placeholder naming no parameter stays as written, as in AWS Batch.

use std::collections::BTreeMap;

use super::common::JobTemplate;

/// What introduces a placeholder.
pub const PREFIX: &str = "Ref::";

/// The parameters a job sees: its definition's, overridden by its own.
pub fn merged(
    definition: &BTreeMap<String, String>,
    job: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut all = definition.clone();
    all.extend(job.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `s` with each `Ref::name` whose name is a parameter replaced by its value. A name runs
/// to the first character that is not a letter, digit or underscore, so `Ref::in.csv`
/// names `in`. Values are not substituted again.
pub fn substitute(s: &str, parameters: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + PREFIX.len()..];
        let end = after
            .find(|c: char| !is_name_char(c))
            .unwrap_or(after.len());
        let name = &after[..end];
        match parameters.get(name) {
            Some(value) if !name.is_empty() => out.push_str(value),
            _ => {
                out.push_str(PREFIX);
                out.push_str(name);
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Substitutes the parameters into the template's container command and args and its
/// process command.
pub fn apply(template: &mut JobTemplate, parameters: &BTreeMap<String, String>) {
    if parameters.is_empty() {
        return;
    }
    let all = |v: &mut Vec<String>| {
        for s in v.iter_mut() {
            *s = substitute(s, parameters);
        }
    };
    if let Some(c) = &mut template.container {
        all(&mut c.command);
        all(&mut c.args);
    }
    if let Some(p) = &mut template.process {
        all(&mut p.command);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::ProcessSpec;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn whole_and_embedded_placeholders_are_replaced_unknown_ones_stay() {
        let p = params(&[("inputfile", "in.mp4"), ("codec", "h264")]);
        assert_eq!(substitute("Ref::inputfile", &p), "in.mp4");
        assert_eq!(substitute("--codec=Ref::codec", &p), "--codec=h264");
        assert_eq!(
            substitute("s3://b/Ref::inputfile.bak", &p),
            "s3://b/in.mp4.bak"
        );
        assert_eq!(substitute("Ref::outputfile", &p), "Ref::outputfile");
        assert_eq!(substitute("Ref::", &p), "Ref::");
        assert_eq!(
            substitute("Ref::codecs", &p),
            "Ref::codecs",
            "a longer name is another parameter"
        );
        assert_eq!(substitute("Ref::codec Ref::codec", &p), "h264 h264");
        assert_eq!(substitute("no placeholder", &p), "no placeholder");
    }

    #[test]
    fn values_are_not_substituted_again() {
        let p = params(&[("a", "Ref::b"), ("b", "x")]);
        assert_eq!(substitute("Ref::a", &p), "Ref::b");
    }

    #[test]
    fn the_jobs_values_override_the_definitions() {
        let all = merged(
            &params(&[("codec", "mp4"), ("size", "1")]),
            &params(&[("codec", "h264"), ("input", "a")]),
        );
        assert_eq!(
            all,
            params(&[("codec", "h264"), ("input", "a"), ("size", "1")])
        );
    }

    #[test]
    fn command_and_args_are_resolved() {
        let mut t = JobTemplate {
            process: Some(ProcessSpec {
                command: vec!["echo".into(), "Ref::greeting".into(), "Ref::name".into()],
                env: vec![],
                working_dir: None,
            }),
            ..Default::default()
        };
        apply(&mut t, &params(&[("greeting", "hello")]));
        assert_eq!(
            t.process.map(|p| p.command),
            Some(vec!["echo".into(), "hello".into(), "Ref::name".into()])
        );
    }
}
