//! Behaviour tests of the engine on schemas shaped like this project's CRDs
//! (kube-rs + schemars output: `nullable` Options, int-or-string, maps,
//! preserve-unknown-fields, CEL rules).

use serde_json::{Value, json};

use super::*;

fn batch_job_schema() -> Value {
    json!({
        "type": "object",
        "description": "A unit of work.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "description": "What to run.",
                "required": ["queue"],
                "x-kubernetes-validations": [
                    {"rule": "has(self.definitionRef) || has(self.container)", "message": "one of definitionRef or container is required"}
                ],
                "properties": {
                    "queue": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-z0-9-]+$"},
                    "definitionRef": {"type": "string", "nullable": true},
                    "container": {
                        "type": "object",
                        "nullable": true,
                        "required": ["image"],
                        "properties": {
                            "image": {"type": "string"},
                            "command": {"type": "array", "nullable": true, "items": {"type": "string"}},
                            "env": {
                                "type": "array",
                                "nullable": true,
                                "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["name"],
                                "items": {"type": "object", "required": ["name"], "properties": {
                                    "name": {"type": "string"}, "value": {"type": "string", "nullable": true}
                                }}
                            }
                        }
                    },
                    "resources": {
                        "type": "object",
                        "nullable": true,
                        "properties": {
                            "cpu": {"x-kubernetes-int-or-string": true, "nullable": true,
                                "pattern": "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$",
                                "x-kubernetes-validations": [{"rule": "isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('0')) > 0", "message": "cpu must be a positive quantity"}]},
                            "memory": {"type": "string", "nullable": true,
                                "x-kubernetes-validations": [{"rule": "quantity(self).isLessThan(quantity('1Ti'))", "messageExpression": "'memory ' + self + ' is too large'"}]}
                        }
                    },
                    "retryStrategy": {
                        "type": "object",
                        "nullable": true,
                        "properties": {
                            "attempts": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 10, "default": 1},
                            "mode": {"type": "string", "enum": ["RETRY", "EXIT"], "default": "EXIT"}
                        }
                    },
                    "timeoutSeconds": {"type": "integer", "format": "int64", "nullable": true, "minimum": 1, "exclusiveMinimum": false},
                    "dependsOn": {"type": "array", "maxItems": 20, "nullable": true, "items": {"type": "object", "required": ["jobName"], "properties": {"jobName": {"type": "string"}, "type": {"type": "string", "enum": ["N_TO_N", "SEQUENTIAL"], "nullable": true}}}},
                    "arrayProperties": {"type": "object", "nullable": true, "properties": {"size": {"type": "integer", "minimum": 2, "maximum": 10000}}},
                    "labels": {"type": "object", "nullable": true, "additionalProperties": {"type": "string", "maxLength": 5}},
                    "tags": {"type": "array", "nullable": true, "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                    "extra": {"type": "object", "nullable": true, "x-kubernetes-preserve-unknown-fields": true},
                    "priority": {"type": "integer", "nullable": true,
                        "x-kubernetes-validations": [{"rule": "self >= oldSelf", "message": "priority may only increase"}]},
                    "startAfter": {"type": "string", "format": "date-time", "nullable": true},
                    "ratio": {"type": "number", "nullable": true, "maximum": 1.5}
                }
            },
            "status": {"type": "object", "nullable": true, "x-kubernetes-preserve-unknown-fields": true}
        }
    })
}

fn compute_env_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["minInstances", "maxInstances"],
                "x-kubernetes-validations": [
                    {"rule": "self.minInstances <= self.maxInstances", "message": "minInstances must be <= maxInstances"},
                    {"rule": "has(self.aws) != has(self.local)", "message": "exactly one provider (aws or local) must be set", "fieldPath": ".aws", "reason": "FieldValueForbidden"}
                ],
                "properties": {
                    "minInstances": {"type": "integer", "minimum": 0},
                    "maxInstances": {"type": "integer", "minimum": 0},
                    "aws": {"type": "object", "nullable": true, "properties": {"autoScalingGroupName": {"type": "string"}, "region": {"type": "string", "nullable": true}}},
                    "local": {"type": "object", "nullable": true, "properties": {}},
                    "state": {"type": "string", "enum": ["Enabled", "Disabled"], "default": "Enabled"}
                }
            }
        },
        "x-kubernetes-validations": [{"rule": "self.metadata.name.size() <= 40", "message": "name too long"}]
    })
}

fn bj() -> StructuralSchema {
    StructuralSchema::compile(&batch_job_schema()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn ce() -> StructuralSchema {
    StructuralSchema::compile(&compute_env_schema()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn job(spec: Value) -> Value {
    json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob", "metadata": {"name": "j", "namespace": "default"}, "spec": spec})
}

fn messages(errs: &[FieldError]) -> Vec<String> {
    errs.iter().map(FieldError::to_string_k8s).collect()
}

#[test]
fn valid_job_passes() {
    let obj = job(
        json!({"queue": "q", "container": {"image": "busybox", "env": [{"name": "A"}]},
        "resources": {"cpu": "500m", "memory": "1Gi"}, "retryStrategy": {"attempts": 3},
        "dependsOn": [{"jobName": "a"}], "labels": {"a": "b"}, "tags": ["x", "y"], "startAfter": "2024-01-02T03:04:05Z", "ratio": 1}),
    );
    assert_eq!(messages(&bj().validate(&obj, None)), Vec::<String>::new());
}

#[test]
fn numeric_bounds_are_worded_like_kube() {
    let obj = job(
        json!({"queue": "q", "container": {"image": "i"}, "retryStrategy": {"attempts": 11}, "arrayProperties": {"size": 1}, "ratio": 2.5}),
    );
    let m = messages(&bj().validate(&obj, None));
    assert!(m.contains(&"spec.retryStrategy.attempts: Invalid value: 11: spec.retryStrategy.attempts in body should be less than or equal to 10".to_string()), "{m:?}");
    assert!(m.contains(&"spec.arrayProperties.size: Invalid value: 1: spec.arrayProperties.size in body should be greater than or equal to 2".to_string()), "{m:?}");
    assert!(m.contains(&"spec.ratio: Invalid value: 2.5: spec.ratio in body should be less than or equal to 1.5".to_string()), "{m:?}");
}

#[test]
fn required_type_enum_and_strings() {
    let obj = job(
        json!({"container": {"command": "not-a-list"}, "retryStrategy": {"mode": "MAYBE"}, "queue": "Bad_Queue"}),
    );
    let errs = bj().validate(&obj, None);
    let m = messages(&errs);
    assert!(m.contains(&"spec.container.command: Invalid value: \"string\": spec.container.command in body must be of type array: \"string\"".to_string()), "{m:?}");
    assert!(
        m.contains(&"spec.container.image: Required value".to_string()),
        "{m:?}"
    );
    assert!(m.contains(&"spec.retryStrategy.mode: Unsupported value: \"MAYBE\": supported values: \"RETRY\", \"EXIT\"".to_string()), "{m:?}");
    assert!(m.contains(&"spec.queue: Invalid value: \"Bad_Queue\": spec.queue in body should match '^[a-z0-9-]+$'".to_string()), "{m:?}");
    // blocking errors stop CEL, as kube-apiserver does
    assert_eq!(
        m.last().map(String::as_str),
        Some(
            "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
        )
    );
    let type_err = errs
        .iter()
        .find(|e| e.field == "spec.container.command")
        .map(FieldError::cause);
    assert_eq!(
        type_err.map(|c| c["reason"].clone()),
        Some(json!("FieldValueTypeInvalid"))
    );
    let missing = bj().validate(
        &json!({"apiVersion": "a", "kind": "BatchJob", "metadata": {"name": "x"}}),
        None,
    );
    assert_eq!(messages(&missing)[0], "spec: Required value");
}

#[test]
fn lengths_and_counts() {
    let deps: Vec<Value> = (0..21)
        .map(|i| json!({"jobName": format!("j{i}")}))
        .collect();
    let obj = job(
        json!({"queue": "", "container": {"image": "i"}, "dependsOn": deps, "labels": {"k": "toolong"}}),
    );
    let m = messages(&bj().validate(&obj, None));
    assert!(
        m.contains(&"spec.dependsOn: Too many: 21: must have at most 20 items".to_string()),
        "{m:?}"
    );
    assert!(
        m.contains(
            &"spec.queue: Invalid value: \"\": spec.queue in body should be at least 1 chars long"
                .to_string()
        ),
        "{m:?}"
    );
    assert!(
        m.contains(&"spec.labels.k: Too long: may not be more than 5 bytes".to_string()),
        "{m:?}"
    );
}

#[test]
fn cel_rules_at_every_level() {
    let obj = job(json!({"queue": "q"}));
    assert_eq!(
        messages(&bj().validate(&obj, None)),
        vec!["spec: Invalid value: one of definitionRef or container is required".to_string()]
    );
    let obj =
        job(json!({"queue": "q", "definitionRef": "d", "resources": {"cpu": 0, "memory": "2Ti"}}));
    let m = messages(&bj().validate(&obj, None));
    assert!(
        m.contains(
            &"spec.resources.memory: Invalid value: \"2Ti\": memory 2Ti is too large".to_string()
        ),
        "{m:?}"
    );
    assert!(
        m.iter().any(|x| x
            .starts_with("spec.resources.cpu: Invalid value: 0: cpu must be a positive quantity")),
        "{m:?}"
    );
    let ce_obj = json!({"metadata": {"name": "ce"}, "spec": {"minInstances": 5, "maxInstances": 2, "aws": {"autoScalingGroupName": "a"}, "local": {}}});
    let errs = ce().validate(&ce_obj, None);
    assert_eq!(
        messages(&errs),
        vec![
            "spec: Invalid value: minInstances must be <= maxInstances".to_string(),
            "spec.aws: Forbidden: exactly one provider (aws or local) must be set".to_string(),
        ]
    );
    let root_rule = json!({"metadata": {"name": "x".repeat(41)}, "spec": {"minInstances": 0, "maxInstances": 2, "local": {}}});
    assert_eq!(
        messages(&ce().validate(&root_rule, None)),
        vec!["<nil>: Invalid value: name too long".to_string()]
    );
}

#[test]
fn transition_rules_and_ratcheting() {
    let s = bj();
    let old = job(json!({"queue": "q", "definitionRef": "d", "priority": 5}));
    let lower = job(json!({"queue": "q", "definitionRef": "d", "priority": 4}));
    assert_eq!(
        messages(&s.validate(&lower, Some(&old))),
        vec!["spec.priority: Invalid value: 4: priority may only increase".to_string()]
    );
    // on create the transition rule is not evaluated
    assert!(s.validate(&lower, None).is_empty());
    // an unchanged invalid value is ratcheted on update, a changed one is not
    let bad_old =
        job(json!({"queue": "q", "definitionRef": "d", "retryStrategy": {"attempts": 50}}));
    let same = bad_old.clone();
    assert!(s.validate(&same, Some(&bad_old)).is_empty());
    let changed =
        job(json!({"queue": "q", "definitionRef": "d", "retryStrategy": {"attempts": 60}}));
    assert_eq!(s.validate(&changed, Some(&bad_old)).len(), 1);
}

/// The BatchJob spec's transition rule (on `cancel`) and an immutability rule on a whole
/// object, as kube-apiserver evaluates them on update: a status write leaves them holding,
/// a change of the fields they guard is refused, naming the field.
#[test]
fn transition_rules_refuse_a_changed_field_and_pass_a_status_write() {
    let schema = json!({"type": "object", "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object",
            "x-kubernetes-validations": [
                {"rule": "has(self.definitionRef) || has(self.process)", "message": "a job needs definitionRef or process"},
                {"rule": "!has(oldSelf.cancel) || (has(self.cancel) && self.cancel == oldSelf.cancel)",
                 "message": "cancel cannot be changed or removed once set", "fieldPath": ".cancel"}],
            "properties": {
                "queue": {"type": "string"},
                "definitionRef": {"type": "string", "nullable": true},
                "process": {"type": "object", "nullable": true, "properties": {"command": {"type": "array", "items": {"type": "string"}}}},
                "cancel": {"type": "object", "nullable": true, "properties": {"reason": {"type": "string"}}},
                "pinned": {"type": "object", "nullable": true,
                    "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "pinned is immutable"}],
                    "properties": {"node": {"type": "string"}, "slot": {"type": "integer"}}}}},
        "status": {"type": "object", "nullable": true, "x-kubernetes-preserve-unknown-fields": true}}});
    let s = StructuralSchema::compile(&schema).unwrap_or_else(|e| panic!("{e:?}"));
    let obj = |spec: Value, status: Value| json!({"metadata": {"name": "j"}, "spec": spec, "status": status});
    let spec = json!({"queue": "q", "process": {"command": ["true"]}, "cancel": {"reason": "user"},
        "pinned": {"node": "n1", "slot": 1}});
    let old = obj(spec.clone(), json!({"phase": "Running"}));
    // a status write: the spec is unchanged, the transition rules hold
    assert!(
        s.validate(
            &obj(spec.clone(), json!({"phase": "Succeeded"})),
            Some(&old)
        )
        .is_empty()
    );
    // a change elsewhere in the spec leaves cancel and pinned alone
    let mut other = spec.clone();
    other["queue"] = json!("q2");
    assert!(
        s.validate(&obj(other, json!({"phase": "Running"})), Some(&old))
            .is_empty()
    );
    let cancel_error = vec![
        "spec.cancel: Invalid value: cancel cannot be changed or removed once set".to_string(),
    ];
    // cancel changed, or removed
    let mut changed = spec.clone();
    changed["cancel"]["reason"] = json!("timeout");
    assert_eq!(
        messages(&s.validate(&obj(changed, json!(null)), Some(&old))),
        cancel_error
    );
    let mut removed = spec.clone();
    if let Some(m) = removed.as_object_mut() {
        m.remove("cancel");
    }
    assert_eq!(
        messages(&s.validate(&obj(removed, json!(null)), Some(&old))),
        cancel_error
    );
    // a whole-object rule (`self == oldSelf`) sees every field of the object
    let mut moved = spec.clone();
    moved["pinned"]["slot"] = json!(2);
    assert_eq!(
        messages(&s.validate(&obj(moved, json!(null)), Some(&old))),
        vec!["spec.pinned: Invalid value: pinned is immutable".to_string()]
    );
    // the other spec rule is still evaluated on a changed spec
    let mut bare = spec.clone();
    if let Some(m) = bare.as_object_mut() {
        m.remove("process");
    }
    assert_eq!(
        messages(&s.validate(&obj(bare, json!(null)), Some(&old))),
        vec!["spec: Invalid value: a job needs definitionRef or process".to_string()]
    );
}

#[test]
fn optional_old_self() {
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"x": {"type": "integer",
        "x-kubernetes-validations": [{"rule": "!oldSelf.hasValue() || self >= oldSelf.value()", "optionalOldSelf": true, "message": "x may not decrease"}]}}}}});
    let s = StructuralSchema::compile(&schema).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(s.validate(&json!({"spec": {"x": 1}}), None).is_empty());
    assert_eq!(
        messages(&s.validate(&json!({"spec": {"x": 1}}), Some(&json!({"spec": {"x": 2}})))),
        vec!["spec.x: Invalid value: 1: x may not decrease".to_string()]
    );
}

#[test]
fn list_types() {
    let obj = job(
        json!({"queue": "q", "container": {"image": "i", "env": [{"name": "A"}, {"name": "A", "value": "x"}]}, "tags": ["a", "b", "a"]}),
    );
    let m = messages(&bj().validate(&obj, None));
    assert!(
        m.contains(&"spec.container.env[1]: Duplicate value: {\"name\":\"A\"}".to_string()),
        "{m:?}"
    );
    assert!(
        m.contains(&"spec.tags[2]: Duplicate value: \"a\"".to_string()),
        "{m:?}"
    );
}

#[test]
fn formats_and_int_or_string() {
    let obj = job(
        json!({"queue": "q", "definitionRef": "d", "startAfter": "tomorrow", "resources": {"cpu": true}}),
    );
    let m = messages(&bj().validate(&obj, None));
    assert!(m.contains(&"spec.startAfter: Invalid value: \"tomorrow\": spec.startAfter in body must be of type date-time: \"tomorrow\"".to_string()), "{m:?}");
    assert!(m.contains(&"spec.resources.cpu: Invalid value: \"boolean\": spec.resources.cpu in body must be of type integer: \"boolean\"".to_string()), "{m:?}");
    let ok = job(json!({"queue": "q", "definitionRef": "d", "resources": {"cpu": 2}}));
    assert!(bj().validate(&ok, None).is_empty());
}

#[test]
fn nullable_and_null_handling() {
    let s = bj();
    let mut obj = job(
        json!({"queue": "q", "definitionRef": null, "container": {"image": "i"}, "retryStrategy": {"attempts": null}}),
    );
    s.apply_defaults(&mut obj);
    // nullable field keeps its null; a non-nullable null with a default gets the default
    assert_eq!(obj["spec"]["definitionRef"], Value::Null);
    assert_eq!(obj["spec"]["retryStrategy"]["attempts"], json!(1));
    assert!(
        s.validate(&obj, None).is_empty(),
        "{:?}",
        messages(&s.validate(&obj, None))
    );
    let mut with_null =
        job(json!({"queue": "q", "definitionRef": "d", "arrayProperties": {"size": null}}));
    s.apply_defaults(&mut with_null);
    assert_eq!(with_null["spec"]["arrayProperties"], json!({}));
    let raw_null =
        job(json!({"queue": "q", "definitionRef": "d", "arrayProperties": {"size": null}}));
    assert_eq!(
        messages(&s.validate(&raw_null, None))[0],
        "spec.arrayProperties.size: Invalid value: \"null\": spec.arrayProperties.size in body must be of type integer: \"null\""
    );
}

#[test]
fn root_metadata_name_constraints() {
    let schema = json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}}}}});
    let s = StructuralSchema::compile(&schema).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(
        s.validate(
            &json!({"metadata": {"name": "abc", "labels": {"x": "y"}}}),
            None
        )
        .is_empty()
    );
    assert_eq!(
        messages(&s.validate(&json!({"metadata": {"name": "abcdef"}}), None))[0],
        "metadata.name: Too long: may not be more than 5 bytes"
    );
}

#[test]
fn null_default_is_no_default() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "string", "nullable": true, "default": null}}});
    let s = StructuralSchema::compile(&schema).unwrap_or_else(|e| panic!("{e:?}"));
    let mut obj = json!({});
    s.apply_defaults(&mut obj);
    assert_eq!(obj, json!({}));
}

#[test]
fn defaults_apply_only_where_parents_exist() {
    let s = bj();
    let mut obj = job(json!({"queue": "q", "definitionRef": "d"}));
    s.apply_defaults(&mut obj);
    assert!(obj["spec"].get("retryStrategy").is_none());
    let mut obj = job(json!({"queue": "q", "definitionRef": "d", "retryStrategy": {}}));
    s.apply_defaults(&mut obj);
    assert_eq!(
        obj["spec"]["retryStrategy"],
        json!({"attempts": 1, "mode": "EXIT"})
    );
    let mut ce_obj = json!({"spec": {"minInstances": 0, "maxInstances": 1, "local": {}}});
    ce().apply_defaults(&mut ce_obj);
    assert_eq!(ce_obj["spec"]["state"], "Enabled");
}

#[test]
fn pruning() {
    let s = bj();
    let mut obj = job(
        json!({"queue": "q", "definitionRef": "d", "foo": 1, "container": {"image": "i", "env": [{"name": "a", "bogus": true}]},
        "extra": {"anything": {"goes": 1}}, "labels": {"free": "x"}}),
    );
    obj["metadata"]["bogus"] = json!("x");
    obj["status"] = json!({"whatever": 1});
    obj["unknownTop"] = json!(1);
    let pruned = s.prune(&mut obj);
    assert_eq!(
        pruned,
        vec![
            "metadata.bogus",
            "spec.container.env[0].bogus",
            "spec.foo",
            "unknownTop"
        ]
    );
    assert!(obj["spec"].get("foo").is_none());
    assert_eq!(obj["spec"]["extra"], json!({"anything": {"goes": 1}}));
    assert_eq!(obj["status"], json!({"whatever": 1}));
    assert_eq!(obj["apiVersion"], "asgbatch.io/v1alpha1");
    assert_eq!(obj["metadata"]["name"], "j");
    assert_eq!(
        unknown_field_warning(&pruned[2]),
        "unknown field \"spec.foo\""
    );
}

#[test]
fn bad_schemas_are_refused_with_paths() {
    let bad =
        json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "strin"}}}}});
    let errs = StructuralSchema::compile(&bad).map(|_| ()).unwrap_err();
    let m = messages(&errs);
    assert!(m.contains(&"spec.validation.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields".to_string()), "{m:?}");
    assert!(m.iter().any(|x| x.starts_with("spec.validation.openAPIV3Schema.properties[spec].properties[a].type: Unsupported value: \"strin\"")), "{m:?}");
    let bad_cel = json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a ==", "message": "m"}]});
    let errs = StructuralSchema::compile_at(&bad_cel, "spec.versions[0].schema.openAPIV3Schema")
        .map(|_| ())
        .unwrap_err();
    assert!(errs[0].to_string_k8s().starts_with("spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.a ==\", Message:\"m\""), "{:?}", messages(&errs));
    let undefined = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"minInstances": {"type": "integer"}, "list": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}}},
        "x-kubernetes-validations": [{"rule": "self.minInstances <= self.maxInstancez"}, {"rule": "self.list.all(x, x.a != '')"}, {"rule": "self.list[0].b == ''"}]}}});
    let errs = StructuralSchema::compile(&undefined)
        .map(|_| ())
        .unwrap_err();
    let m = messages(&errs);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m[0].starts_with("spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.minInstances <= self.maxInstancez\""), "{m:?}");
    assert!(m[0].contains("undefined field 'maxInstancez'"), "{m:?}");
    assert!(m[1].contains("undefined field 'b'"), "{m:?}");
    let bad_default = json!({"type": "object", "properties": {"a": {"type": "integer", "maximum": 10, "default": 20}}});
    let errs = StructuralSchema::compile(&bad_default)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(messages(&errs), vec!["spec.validation.openAPIV3Schema.properties[a].default: Invalid value: 20: spec.validation.openAPIV3Schema.properties[a].default in body should be less than or equal to 10".to_string()]);
    let unsupported = json!({"type": "object", "x-kubernetes-validations": [{"rule": "url(self.u).getHost() == 'x'"}]});
    let errs = StructuralSchema::compile(&unsupported)
        .map(|_| ())
        .unwrap_err();
    assert!(
        errs[0]
            .message
            .contains("not supported by this API server's CEL engine: getHost, url"),
        "{:?}",
        messages(&errs)
    );
    for bad in [
        json!({"type": "string"}),
        json!({"type": "object", "properties": {"a": {"type": "array"}}}),
        json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}),
        json!({"type": "object", "properties": {"a": {"type": "object", "additionalProperties": {"type": "string"}, "properties": {"b": {"type": "string"}}}}}),
        json!({"type": "object", "x-kubernetes-validations": [{"rule": "true", "reason": "Nope"}]}),
        json!({"type": "object", "x-kubernetes-validations": [{"rule": "true", "optionalOldSelf": true}]}),
        json!({"type": "object", "properties": {"a": {"$ref": "#/x"}}}),
        json!("nope"),
    ] {
        assert!(StructuralSchema::compile(&bad).is_err(), "{bad}");
    }
}

#[test]
fn junctors_as_kube_rs_emits_them() {
    // a Rust enum with data: exactly one of aws / local
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
        "oneOf": [{"required": ["aws"]}, {"required": ["local"]}],
        "anyOf": [{"properties": {"n": {"minimum": 1}}}, {"properties": {"n": {"maximum": -1}}}],
        "properties": {"aws": {"type": "object"}, "local": {"type": "object"}, "n": {"type": "integer"}},
        "not": {"required": ["forbidden"]},
        "allOf": [{"properties": {"n": {"maximum": 100}}}]}}});
    let s = StructuralSchema::compile(&schema).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(
        s.validate(&json!({"spec": {"aws": {}, "n": 2}}), None)
            .is_empty()
    );
    let m = messages(&s.validate(&json!({"spec": {"n": 2}}), None));
    assert_eq!(m, vec![
        "spec: Invalid value: \"\": spec in body must validate one and only one schema (oneOf). Found none valid".to_string(),
        "spec.aws: Required value".to_string(),
    ]);
    let m = messages(&s.validate(
        &json!({"spec": {"aws": {}, "local": {}, "n": 0, "forbidden": 1}}),
        None,
    ));
    assert!(
        m.contains(
            &"spec: Invalid value: \"\": spec in body must validate at least one schema (anyOf)"
                .to_string()
        ),
        "{m:?}"
    );
    assert!(
        m.contains(
            &"spec.n: Invalid value: 0: spec.n in body should be greater than or equal to 1"
                .to_string()
        ),
        "{m:?}"
    );
    assert!(m.contains(&"spec: Invalid value: \"\": spec in body must validate one and only one schema (oneOf). Found 2 valid alternatives".to_string()), "{m:?}");
    assert!(
        m.contains(
            &"spec: Invalid value: \"\": spec in body must not validate the schema provided"
                .to_string()
        ),
        "{m:?}"
    );
    let m = messages(&s.validate(&json!({"spec": {"aws": {}, "n": 200}}), None));
    assert_eq!(m, vec![
        "spec.n: Invalid value: 200: spec.n in body should be less than or equal to 100".to_string(),
        "spec: Invalid value: \"\": spec in body must validate all the schemas (allOf). None validated".to_string(),
    ]);
}

#[test]
fn deep_rules_on_a_small_stack() {
    let worker = std::thread::Builder::new().stack_size(2 << 20).spawn(|| {
        let deep = format!(
            "{}self.a > 0 && ({}1{}) == 1",
            "self.a + 1 >= 0 && ".repeat(150),
            "(".repeat(50),
            ")".repeat(50)
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": deep, "message": "a must be positive"}]});
        let s = StructuralSchema::compile(&schema).unwrap_or_else(|e| panic!("{e:?}"));
        let ok = s.validate(&json!({"a": 1}), None);
        let bad = s.validate(&json!({"a": 0}), None);
        (ok.len(), messages(&bad))
    });
    let (ok, bad) = worker
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    assert_eq!(ok, 0);
    assert_eq!(
        bad,
        vec!["<nil>: Invalid value: a must be positive".to_string()]
    );
}

#[test]
fn cel_runtime_errors_are_reported() {
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"a": {"type": "integer", "nullable": true}},
        "x-kubernetes-validations": [{"rule": "self.a > 0"}]}}});
    let s = StructuralSchema::compile(&schema).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        messages(&s.validate(&json!({"spec": {}}), None)),
        vec![
            "spec: Invalid value: \"object\": no such key: a evaluating rule: self.a > 0"
                .to_string()
        ]
    );
    assert_eq!(
        messages(&s.validate(&json!({"spec": {"a": 0}}), None)),
        vec!["spec: Invalid value: failed rule: self.a > 0".to_string()]
    );
    // absent or null values are not evaluated
    assert!(s.validate(&json!({}), None).is_empty());
    let null_spec = messages(&s.validate(&json!({"spec": null}), None));
    assert_eq!(
        null_spec[0],
        "spec: Invalid value: \"null\": spec in body must be of type object: \"null\""
    );
    assert_eq!(null_spec.len(), 2);
}

#[test]
fn status_body_for_a_rejected_job() {
    let errs = bj().validate(&job(json!({"queue": "q"})), None);
    let st = invalid_status("asgbatch.io", "BatchJob", "j", &errs);
    assert_eq!(
        st["message"],
        "BatchJob.asgbatch.io \"j\" is invalid: spec: Invalid value: one of definitionRef or container is required"
    );
    assert_eq!(
        st["details"],
        json!({"name": "j", "group": "asgbatch.io", "kind": "BatchJob", "causes": [
        {"reason": "FieldValueInvalid", "message": "Invalid value: one of definitionRef or container is required", "field": "spec"}]})
    );
}

fn crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "batchjobs.asgbatch.io"},
        "spec": {
            "group": "asgbatch.io",
            "names": {"kind": "BatchJob", "plural": "batchjobs", "singular": "batchjob", "shortNames": ["bj"]},
            "scope": "Namespaced",
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": batch_job_schema()}, "subresources": {"status": {}}}]
        }
    })
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn openapi_document_for_kubectl() {
    let doc = openapi_v3_group_version("asgbatch.io", "v1alpha1", &[crd()]);
    let schemas = &doc["components"]["schemas"];
    let bj = &schemas["io.asgbatch.v1alpha1.BatchJob"];
    assert_eq!(
        bj["x-kubernetes-group-version-kind"],
        json!([{"group": "asgbatch.io", "kind": "BatchJob", "version": "v1alpha1"}])
    );
    assert_eq!(bj["description"], "A unit of work.");
    assert_eq!(bj["properties"]["spec"]["description"], "What to run.");
    assert_eq!(
        bj["properties"]["metadata"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert!(
        bj["properties"]["apiVersion"]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("APIVersion defines"))
    );
    assert_eq!(
        schemas["io.asgbatch.v1alpha1.BatchJobList"]["properties"]["items"]["items"]["$ref"],
        "#/components/schemas/io.asgbatch.v1alpha1.BatchJob"
    );
    assert!(
        schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["labels"]
            .is_object()
    );
    // every reference resolves
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    for r in refs {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(schemas.get(name).is_some(), "dangling {r}");
    }
    // kubectl's fieldValidation probe: a PATCH with the GVK and a fieldValidation query parameter
    let patch = &doc["paths"]["/apis/asgbatch.io/v1alpha1/namespaces/{namespace}/batchjobs/{name}"]
        ["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "asgbatch.io", "version": "v1alpha1", "kind": "BatchJob"})
    );
    assert!(patch["parameters"].as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
    }));
    assert_eq!(
        patch["operationId"],
        "patchAsgbatchIoV1alpha1NamespacedBatchJob"
    );
    assert!(
        doc["paths"]
            .get("/apis/asgbatch.io/v1alpha1/namespaces/{namespace}/batchjobs/{name}/status")
            .is_some()
    );
    assert!(
        doc["paths"]
            .get("/apis/asgbatch.io/v1alpha1/batchjobs")
            .is_some()
    );
    // other groups/versions are not included
    let other = openapi_v3_group_version("other.io", "v1", &[crd()]);
    assert_eq!(other["paths"], json!({}));
}

#[test]
fn openapi_index() {
    let doc = openapi_v3_group_version("asgbatch.io", "v1alpha1", &[crd()]);
    let hash = openapi_v3_hash(&doc);
    assert_eq!(hash.len(), 128);
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    );
    let idx = openapi_v3_index(&[OpenApiIndexEntry {
        path: "apis/asgbatch.io/v1alpha1".into(),
        hash: hash.clone(),
    }]);
    assert_eq!(
        idx["paths"]["apis/asgbatch.io/v1alpha1"]["serverRelativeURL"],
        format!("/openapi/v3/apis/asgbatch.io/v1alpha1?hash={hash}")
    );
    let other = openapi_v3_group_version("asgbatch.io", "v1alpha1", &[]);
    assert_ne!(openapi_v3_hash(&other), hash);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            "[a-zA-Z0-9_.$ -]{0,8}".prop_map(Value::String),
            prop_oneof![
                Just("type"),
                Just("object"),
                Just("string"),
                Just("integer"),
                Just("array"),
                Just("properties"),
                Just("items"),
                Just("x-kubernetes-validations"),
                Just("rule"),
                Just("self.a > 1"),
                Just("has(self.b)"),
                Just("nullable"),
                Just("default"),
                Just("enum"),
                Just("spec"),
                Just("a")
            ]
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("properties".to_string()),
                        Just("items".to_string()),
                        Just("spec".to_string()),
                        Just("a".to_string()),
                        Just("b".to_string()),
                        Just("x-kubernetes-validations".to_string()),
                        Just("rule".to_string()),
                        Just("default".to_string()),
                        Just("additionalProperties".to_string()),
                        Just("nullable".to_string()),
                        Just("x-kubernetes-preserve-unknown-fields".to_string()),
                        Just("maximum".to_string()),
                        Just("enum".to_string()),
                        "[a-z]{1,4}".prop_map(String::from)
                    ],
                    inner,
                    0..5,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn never_panics_on_random_objects(obj in arb_json(), old in arb_json()) {
            let s = bj();
            let mut o = obj.clone();
            let _ = s.prune(&mut o);
            s.apply_defaults(&mut o);
            let _ = s.validate(&o, Some(&old));
            let _ = s.validate(&obj, None);
            let mut c = obj.clone();
            let c_schema = ce();
            let _ = c_schema.prune(&mut c);
            c_schema.apply_defaults(&mut c);
            let _ = c_schema.validate(&c, Some(&old));
        }

        #[test]
        fn never_panics_on_random_schemas(schema in arb_json(), obj in arb_json()) {
            if let Ok(s) = StructuralSchema::compile(&schema) {
                let mut o = obj.clone();
                let _ = s.prune(&mut o);
                s.apply_defaults(&mut o);
                let _ = s.validate(&o, Some(&obj));
            }
            let _ = openapi_v3_group_version("g", "v", &[json!({"spec": {"group": "g", "names": {"kind": "K", "plural": "ks"}, "versions": [{"name": "v", "schema": {"openAPIV3Schema": schema}}]}})]);
        }

        #[test]
        fn random_rules_never_panic(rule in "[a-z().'\\[\\]!&|<>=+ 0-9,-]{0,24}") {
            let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-validations": [{"rule": rule.clone(), "messageExpression": rule}]}}});
            if let Ok(s) = StructuralSchema::compile(&schema) {
                let _ = s.validate(&json!({"spec": {"a": 1, "b": "x", "c": [1, 2]}}), Some(&json!({"spec": {}})));
            }
        }

        #[test]
        fn quantities_never_panic(s in "[-+0-9.eEinumkKMGTP]{0,30}") {
            let _ = Quantity::parse(&s);
        }
    }
}
