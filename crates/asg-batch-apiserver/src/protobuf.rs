//! Decoding of protobuf request bodies (`application/vnd.kubernetes.protobuf`) for the
//! built-in kinds client-go's typed clients send that way (Helm stores releases in
//! Secrets through one): Secret, ConfigMap, Namespace, Lease, and DeleteOptions.
//! Responses are always JSON (clients list JSON as an accepted fallback).
//!
//! The wire format is kube-apiserver's: the magic `k8s\0`, then a `runtime.Unknown`
//! message whose `raw` field holds the object's protobuf encoding.

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bytes,
    Bool,
    Int,
    Time,
    Msg(&'static [Field]),
    MapStr,
    MapBytes,
    RepStr,
    RepMsg(&'static [Field]),
}

struct Field(u64, &'static str, Kind);

const OWNER_REF: &[Field] = &[
    Field(1, "kind", Kind::Str),
    Field(3, "name", Kind::Str),
    Field(4, "uid", Kind::Str),
    Field(5, "apiVersion", Kind::Str),
    Field(6, "controller", Kind::Bool),
    Field(7, "blockOwnerDeletion", Kind::Bool),
];
const MANAGED_FIELDS: &[Field] = &[
    Field(1, "manager", Kind::Str),
    Field(2, "operation", Kind::Str),
    Field(3, "apiVersion", Kind::Str),
    Field(4, "time", Kind::Time),
    Field(6, "fieldsType", Kind::Str),
    Field(8, "subresource", Kind::Str),
];
const OBJECT_META: &[Field] = &[
    Field(1, "name", Kind::Str),
    Field(2, "generateName", Kind::Str),
    Field(3, "namespace", Kind::Str),
    Field(5, "uid", Kind::Str),
    Field(6, "resourceVersion", Kind::Str),
    Field(7, "generation", Kind::Int),
    Field(8, "creationTimestamp", Kind::Time),
    Field(9, "deletionTimestamp", Kind::Time),
    Field(10, "deletionGracePeriodSeconds", Kind::Int),
    Field(11, "labels", Kind::MapStr),
    Field(12, "annotations", Kind::MapStr),
    Field(13, "ownerReferences", Kind::RepMsg(OWNER_REF)),
    Field(14, "finalizers", Kind::RepStr),
    Field(17, "managedFields", Kind::RepMsg(MANAGED_FIELDS)),
];
const SECRET: &[Field] = &[
    Field(1, "metadata", Kind::Msg(OBJECT_META)),
    Field(2, "data", Kind::MapBytes),
    Field(3, "type", Kind::Str),
    Field(4, "stringData", Kind::MapStr),
    Field(5, "immutable", Kind::Bool),
];
const CONFIG_MAP: &[Field] = &[
    Field(1, "metadata", Kind::Msg(OBJECT_META)),
    Field(2, "data", Kind::MapStr),
    Field(3, "binaryData", Kind::MapBytes),
    Field(4, "immutable", Kind::Bool),
];
const NAMESPACE_SPEC: &[Field] = &[Field(1, "finalizers", Kind::RepStr)];
const NAMESPACE: &[Field] = &[
    Field(1, "metadata", Kind::Msg(OBJECT_META)),
    Field(2, "spec", Kind::Msg(NAMESPACE_SPEC)),
];
const LEASE_SPEC: &[Field] = &[
    Field(1, "holderIdentity", Kind::Str),
    Field(2, "leaseDurationSeconds", Kind::Int),
    Field(3, "acquireTime", Kind::Time),
    Field(4, "renewTime", Kind::Time),
    Field(5, "leaseTransitions", Kind::Int),
    Field(6, "strategy", Kind::Str),
    Field(7, "preferredHolder", Kind::Str),
];
const LEASE: &[Field] = &[
    Field(1, "metadata", Kind::Msg(OBJECT_META)),
    Field(2, "spec", Kind::Msg(LEASE_SPEC)),
];
const PRECONDITIONS: &[Field] = &[
    Field(1, "uid", Kind::Str),
    Field(2, "resourceVersion", Kind::Str),
];
const DELETE_OPTIONS: &[Field] = &[
    Field(1, "gracePeriodSeconds", Kind::Int),
    Field(2, "preconditions", Kind::Msg(PRECONDITIONS)),
    Field(3, "orphanDependents", Kind::Bool),
    Field(4, "propagationPolicy", Kind::Str),
    Field(5, "dryRun", Kind::RepStr),
];
const TYPE_META: &[Field] = &[
    Field(1, "apiVersion", Kind::Str),
    Field(2, "kind", Kind::Str),
];
const UNKNOWN: &[Field] = &[
    Field(1, "typeMeta", Kind::Msg(TYPE_META)),
    Field(2, "raw", Kind::Bytes),
];
const MAP_ENTRY: &[Field] = &[Field(1, "key", Kind::Str), Field(2, "value", Kind::Bytes)];
const TIME: &[Field] = &[Field(1, "seconds", Kind::Int), Field(2, "nanos", Kind::Int)];

fn bad(why: &str) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf body: {why}"))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> ApiResult<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }
    fn bytes(&mut self) -> ApiResult<&[u8]> {
        let len = usize::try_from(self.varint()?).map_err(|_| bad("length"))?;
        let end = self.pos.checked_add(len).ok_or_else(|| bad("length"))?;
        let s = self
            .b
            .get(self.pos..end)
            .ok_or_else(|| bad("truncated field"))?;
        self.pos = end;
        Ok(s)
    }
    fn skip(&mut self, wire: u64) -> ApiResult<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            _ => Err(bad("unsupported wire type")),
        }
    }
    fn advance(&mut self, n: usize) -> ApiResult<()> {
        if self.pos + n > self.b.len() {
            return Err(bad("truncated"));
        }
        self.pos += n;
        Ok(())
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn utf8(b: &[u8]) -> ApiResult<String> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("invalid UTF-8 in a string field"))
}

fn time(b: &[u8]) -> ApiResult<Value> {
    let t = decode_msg(b, TIME, 0)?;
    let secs = t.get("seconds").and_then(Value::as_i64).unwrap_or(0);
    let ts = jiff::Timestamp::from_second(secs).map_err(|_| bad("time out of range"))?;
    Ok(json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn decode_msg(b: &[u8], fields: &[Field], depth: usize) -> ApiResult<Map<String, Value>> {
    if depth > 16 {
        return Err(bad("nesting too deep"));
    }
    let mut r = Reader { b, pos: 0 };
    let mut out = Map::new();
    while r.pos < b.len() {
        let tag = r.varint()?;
        let (num, wire) = (tag >> 3, tag & 7);
        let Some(Field(_, name, kind)) = fields.iter().find(|f| f.0 == num) else {
            r.skip(wire)?;
            continue;
        };
        let name = name.to_string();
        match (kind, wire) {
            (Kind::Bool, 0) => {
                out.insert(name, json!(r.varint()? != 0));
            }
            (Kind::Int, 0) => {
                out.insert(name, json!(i64::from_ne_bytes(r.varint()?.to_ne_bytes())));
            }
            (Kind::Str, 2) => {
                let s = utf8(r.bytes()?)?;
                out.insert(name, json!(s));
            }
            (Kind::Bytes, 2) => {
                let s = base64(r.bytes()?);
                out.insert(name, json!(s));
            }
            (Kind::Time, 2) => {
                let t = time(r.bytes()?)?;
                out.insert(name, t);
            }
            (Kind::Msg(f), 2) => {
                let m = decode_msg(r.bytes()?, f, depth + 1)?;
                out.insert(name, Value::Object(m));
            }
            (Kind::RepMsg(f), 2) => {
                let m = decode_msg(r.bytes()?, f, depth + 1)?;
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(Value::Object(m));
                }
            }
            (Kind::RepStr, 2) => {
                let s = utf8(r.bytes()?)?;
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(s));
                }
            }
            (Kind::MapStr | Kind::MapBytes, 2) => {
                let entry = r.bytes()?;
                let mut er = Reader { b: entry, pos: 0 };
                let (mut k, mut v) = (String::new(), Vec::new());
                while er.pos < entry.len() {
                    let tag = er.varint()?;
                    match (tag >> 3, tag & 7) {
                        (1, 2) => k = utf8(er.bytes()?)?,
                        (2, 2) => v = er.bytes()?.to_vec(),
                        (_, w) => er.skip(w)?,
                    }
                }
                let _ = MAP_ENTRY;
                let value = if matches!(kind, Kind::MapBytes) {
                    json!(base64(&v))
                } else {
                    json!(utf8(&v)?)
                };
                let map = out.entry(name).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(k, value);
                }
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(out)
}

fn unwrap_envelope(body: &[u8]) -> ApiResult<(String, String, Vec<u8>)> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| bad("missing the k8s protobuf magic"))?;
    let mut r = Reader { b: rest, pos: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), Vec::new());
    while r.pos < rest.len() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let tm = decode_msg(r.bytes()?, TYPE_META, 1)?;
                api_version = tm
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into();
                kind = tm.get("kind").and_then(Value::as_str).unwrap_or("").into();
            }
            (2, 2) => raw = r.bytes()?.to_vec(),
            (_, w) => r.skip(w)?,
        }
    }
    let _ = UNKNOWN;
    Ok((api_version, kind, raw))
}

/// Decode a protobuf-encoded object body into its JSON form.
pub fn decode_object(body: &[u8], expected_kind: &str) -> ApiResult<Value> {
    let (api_version, kind, raw) = unwrap_envelope(body)?;
    let kind = if kind.is_empty() {
        expected_kind.to_string()
    } else {
        kind
    };
    let fields = match kind.as_str() {
        "Secret" => SECRET,
        "ConfigMap" => CONFIG_MAP,
        "Namespace" => NAMESPACE,
        "Lease" => LEASE,
        "DeleteOptions" => DELETE_OPTIONS,
        other => {
            return Err(ApiError::unsupported_media_type(
                &format!("application/vnd.kubernetes.protobuf ({other})"),
                &["application/json", "application/yaml"],
            ));
        }
    };
    let mut obj = decode_msg(&raw, fields, 1)?;
    if !api_version.is_empty() {
        obj.insert("apiVersion".into(), json!(api_version));
    }
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn secret_roundtrip() {
        let mut meta = field(1, b"rel");
        meta.extend(field(11, &[field(1, b"owner"), field(2, b"helm")].concat()));
        let mut secret = field(1, &meta);
        secret.extend(field(2, &[field(1, b"release"), field(2, b"hi")].concat()));
        secret.extend(field(3, b"helm.sh/release.v1"));
        let tm = [field(1, b"v1"), field(2, b"Secret")].concat();
        let mut body = b"k8s\0".to_vec();
        body.extend(field(1, &tm));
        body.extend(field(2, &secret));
        let v = decode_object(&body, "Secret").unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rel", "labels": {"owner": "helm"}},
                   "data": {"release": "aGk="}, "type": "helm.sh/release.v1"})
        );
        assert!(decode_object(b"k8s\0\x0a\xff", "Secret").is_err());
        assert!(decode_object(b"nope", "Secret").is_err());
    }
}
