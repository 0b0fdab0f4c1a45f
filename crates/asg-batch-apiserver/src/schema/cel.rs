//! `x-kubernetes-validations` CEL rules: compiling, checking the functions a
//! rule uses against what this engine supports, and evaluating with `self` /
//! `oldSelf` bound as kube-apiserver binds them.
//!
//! Supported: the CEL standard library and macros (`has`, `all`, `exists`,
//! `exists_one`, `map`, `filter`), `matches`, the strings extension
//! (`charAt`, `indexOf`, `lastIndexOf`, `lowerAscii`, `upperAscii`, `replace`,
//! `split`, `substring`, `trim`, `join`, `format`, `quote`, `reverse`), the
//! lists extension (`slice`, `flatten`, `distinct`, `sort`, `reverse`), math
//! (`math.greatest`, `math.least`, ...), optionals (`optional.of`,
//! `hasValue()`, `value()`, `orValue()`), and these Kubernetes libraries:
//! quantity (`quantity`, `isQuantity`, `compareTo`, `isGreaterThan`,
//! `isLessThan`, `asInteger`, `asApproximateFloat`, `isInteger`, `sign`,
//! `add`, `sub`), regex (`find`, `findAll`), lists (`isSorted`, `sum`),
//! sets (`sets.contains`, `sets.equivalent`, `sets.intersects`).
//!
//! Not supported (a rule using them is refused at CRD compile time):
//! `timestamp`/`duration`, `url`, `ip`, `cidr`, `semver`, `format.*`
//! validators, authorizer, list `min`/`max`/`indexOf`/`lastIndexOf`.
//!
//! Checking: field selections rooted at `self`/`oldSelf` (`self.a.b`,
//! `self.list[0].c`, `has(self.x)`) are checked against the schema as cel-go's
//! checker does ("undefined field 'x'"); selections on comprehension variables
//! and full type-checking (e.g. `self.name > 1` on a string) are not — those
//! surface at evaluation time as runtime errors. No cost estimation/budget.

use std::sync::{Arc, OnceLock};

use cel::common::types::CelOptional;
use cel::common::value::Val;
use cel::extractors::This;
use cel::objects::{Key, Map, Opaque};
use cel::{Context, Env, ExecutionError, FunctionContext, Program, Value};

use super::quantity::Quantity;

/// A compiled `x-kubernetes-validations` entry.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    /// The rule source.
    pub rule: String,
    pub program: Program,
    /// `message`, trimmed; empty if not given.
    pub message: String,
    pub message_expression: Option<Program>,
    /// `fieldPath` normalized to a dotted child path (`foo.bar`, `foo[0]`).
    pub field_path: Option<String>,
    /// `reason` (FieldValueInvalid, FieldValueForbidden, FieldValueRequired, FieldValueDuplicate).
    pub reason: Option<String>,
    /// The rule refers to `oldSelf`: a transition rule.
    pub uses_old_self: bool,
    /// `optionalOldSelf: true`.
    pub optional_old_self: bool,
    /// The rule as kube-apiserver prints it in CRD errors (a Go struct literal).
    pub shown: String,
    /// The deepest expression tree of the rule and its message expression.
    pub depth: usize,
    /// The fields of `self`/`oldSelf` the rule and its message expression read, when
    /// they read them only by selecting fields ([`selected_fields`]); `None`: they use
    /// a whole value.
    pub fields: Option<Vec<String>>,
}

/// Functions (beyond operators) a rule may call.
const SUPPORTED_FUNCTIONS: &[&str] = &[
    // standard library
    "size",
    "matches",
    "contains",
    "startsWith",
    "endsWith",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "has",
    // strings extension
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "format",
    "strings.quote",
    "reverse",
    // lists extension
    "slice",
    "flatten",
    "distinct",
    "sort",
    "sortBy",
    // math extension
    "math.greatest",
    "math.least",
    "math.abs",
    "math.ceil",
    "math.floor",
    "math.round",
    "math.sign",
    "math.trunc",
    "math.isNaN",
    "math.isInf",
    "math.isFinite",
    // optionals
    "optional.of",
    "optional.ofNonZeroValue",
    "optional.none",
    "hasValue",
    "value",
    "orValue",
    "or",
    "optMap",
    "optFlatMap",
    // Kubernetes libraries implemented here
    "quantity",
    "isQuantity",
    "compareTo",
    "isGreaterThan",
    "isLessThan",
    "asInteger",
    "asApproximateFloat",
    "isInteger",
    "sign",
    "add",
    "sub",
    "find",
    "findAll",
    "isSorted",
    "sum",
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
    // namespaced functions as the parser may report them (without the namespace)
    "quote",
    "greatest",
    "least",
    "abs",
    "ceil",
    "floor",
    "round",
    "trunc",
    "isNaN",
    "isInf",
    "isFinite",
    "of",
    "ofNonZeroValue",
    "none",
    "equivalent",
    "intersects",
];

/// The shared CEL environment (standard library plus extensions).
fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // Extensions only fail on a name clash, which would be a bug here;
        // the stdlib environment still works without them.
        let _ = env.add_extension(cel::extensions::strings);
        let _ = env.add_extension(cel::extensions::lists);
        let _ = env.add_extension(cel::extensions::math);
        Arc::new(env)
    })
    .clone()
}

/// Deepest expression tree evaluated on the caller's stack; deeper ones are
/// evaluated on a thread with a large stack (the CEL crate recurses deeply:
/// a 2 MiB stack overflows near depth 60 in debug builds).
const INLINE_DEPTH: usize = 24;
/// Deepest expression tree accepted at all.
const MAX_DEPTH: usize = 250;
/// Longest rule source accepted.
const MAX_SOURCE_LEN: usize = 16 * 1024;
/// Stack for parsing (antlr recursion) and for evaluating deep expressions.
const BIG_STACK: usize = 256 << 20;

/// Runs `f` on a scoped thread with a large stack; `None` if it panicked or
/// no thread could be started.
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(BIG_STACK)
            .spawn_scoped(s, f)
            .ok()?
            .join()
            .ok()
    })
}

/// A compiled expression with what the engine needs to know about it.
pub(crate) struct Compiled {
    pub program: Program,
    /// Depth of the expression tree.
    pub depth: usize,
    /// Whether it refers to `oldSelf`.
    pub uses_old_self: bool,
}

/// Compiles one CEL expression and checks that every function it calls is
/// supported.
pub(crate) fn compile_expression_with_depth(source: &str) -> Result<Compiled, String> {
    compile_with_variables(source, &[])
}

/// The variables of ValidatingAdmissionPolicy expressions (besides CEL's own).
pub(crate) const ADMISSION_VARIABLES: &[&str] = &["object", "oldObject", "request", "variables"];

/// Compiles one expression that may refer to `extra_vars` besides `self`/`oldSelf`.
pub(crate) fn compile_with_variables(
    source: &str,
    extra_vars: &[&str],
) -> Result<Compiled, String> {
    if source.len() > MAX_SOURCE_LEN {
        return Err(format!(
            "compilation failed: expression is longer than {MAX_SOURCE_LEN} bytes"
        ));
    }
    // Parsing recurses deeply (a 2 MiB stack overflows at ~15 nested
    // parentheses in debug builds): parse on a large stack. A panic in the
    // third-party parser is reported, never propagated.
    let compiled = on_big_stack(|| {
        env().compile(source).map(|p| {
            let depth = ast_depth(p.expression());
            let supported = check_supported(&p, source, extra_vars);
            let uses_old_self = p.references().has_variable("oldSelf");
            (p, depth, supported, uses_old_self)
        })
    })
    .ok_or_else(|| "compilation failed: internal error in the CEL parser".to_string())?;
    // cel-rust words parse errors as cel-go does ("ERROR: <input>:1:10: Syntax error: ...").
    let (program, depth, supported, uses_old_self) =
        compiled.map_err(|e| format!("compilation failed: {e}"))?;
    if depth > MAX_DEPTH {
        return Err(format!(
            "compilation failed: expression nesting depth {depth} exceeds the supported {MAX_DEPTH}"
        ));
    }
    supported?;
    Ok(Compiled {
        program,
        depth,
        uses_old_self,
    })
}

/// [`compile_expression_with_depth`], keeping only the program.
#[cfg(test)]
pub(crate) fn compile_expression(source: &str) -> Result<Program, String> {
    compile_expression_with_depth(source).map(|c| c.program)
}

fn check_supported(program: &Program, source: &str, extra_vars: &[&str]) -> Result<(), String> {
    let refs = program.references();
    let mut unsupported: Vec<&str> = refs
        .functions()
        .into_iter()
        .filter(|f| !is_operator(f) && !SUPPORTED_FUNCTIONS.contains(f))
        .collect();
    unsupported.sort_unstable();
    if !unsupported.is_empty() {
        return Err(format!(
            "compilation failed: function(s) not supported by this API server's CEL engine: {}",
            unsupported.join(", ")
        ));
    }
    let mut vars: Vec<&str> = refs
        .variables()
        .into_iter()
        .filter(|v| {
            !matches!(
                *v,
                "self"
                    | "oldSelf"
                    | "int"
                    | "uint"
                    | "double"
                    | "string"
                    | "bool"
                    | "bytes"
                    | "list"
                    | "map"
                    | "null_type"
                    | "type"
                    | "optional_type"
                    | "strings"
                    | "math"
                    | "sets"
                    | "optional"
            ) && !v.starts_with('@')
                && !extra_vars.contains(v)
        })
        .collect();
    vars.sort_unstable();
    // Comprehension variables are bound inside the program; only report
    // identifiers that are never bound by a macro.
    vars.retain(|v| !binds_variable(source, v));
    if let Some(v) = vars.first() {
        return Err(format!(
            "compilation failed: ERROR: <input>: undeclared reference to '{v}'"
        ));
    }
    Ok(())
}

/// True when `var` is introduced by a macro such as `x.all(var, ...)`.
fn binds_variable(source: &str, var: &str) -> bool {
    [
        "all",
        "exists",
        "exists_one",
        "map",
        "filter",
        "existsOne",
        "transformList",
        "transformMap",
    ]
    .iter()
    .any(|m| {
        let pat = format!(".{m}(");
        source.match_indices(&pat).any(|(i, _)| {
            let rest = &source[i + pat.len()..];
            let rest = rest.trim_start();
            rest.starts_with(var) && rest[var.len()..].trim_start().starts_with([',', ')'])
        })
    })
}

fn is_operator(name: &str) -> bool {
    name.starts_with('_') || name.contains('@') || name.starts_with('!') || name.starts_with('-')
}

/// What evaluating a rule gave.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// The rule held.
    Pass,
    /// The rule did not hold; the message to report.
    Fail(String),
    /// Evaluation failed (e.g. `no such key: foo`); the message to report.
    Error(String),
}

/// The old value bound to `oldSelf`.
pub(crate) enum OldSelf<'a> {
    /// Not a transition rule or not bound.
    None,
    /// A plain `oldSelf`.
    Value(&'a Value),
    /// `optionalOldSelf`: `oldSelf` is an optional (empty when there is no old value).
    Optional(Option<&'a Value>),
}

/// Evaluates `rule` with `self` = `this` (a panic inside the CEL crate is
/// reported as an evaluation error).
pub(crate) fn evaluate(rule: &CompiledRule, this: &Value, old: OldSelf<'_>) -> Outcome {
    let internal = || {
        Outcome::Error(format!(
            "internal error evaluating rule: {}",
            rule_error_string(rule)
        ))
    };
    if rule.depth > INLINE_DEPTH {
        return on_big_stack(|| evaluate_inner(rule, this, old)).unwrap_or_else(internal);
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        evaluate_inner(rule, this, old)
    }))
    .unwrap_or_else(|_| internal())
}

thread_local! {
    /// The environment with the Kubernetes libraries registered, once per thread (not
    /// per evaluation): each evaluation binds its variables in a scope of its own.
    static BASE: Context<'static, 'static> = {
        let mut ctx = Context::with_env(env());
        register_functions(&mut ctx);
        ctx
    };
}

/// Runs `f` with a fresh scope over this thread's [`BASE`] context.
fn with_context<T>(f: impl FnOnce(&mut Context<'_, 'static>) -> T) -> T {
    BASE.with(|base| f(&mut base.new_inner_scope()))
}

fn evaluate_inner(rule: &CompiledRule, this: &Value, old: OldSelf<'_>) -> Outcome {
    with_context(|ctx| evaluate_in(ctx, rule, this, old))
}

fn evaluate_in(
    ctx: &mut Context<'_, 'static>,
    rule: &CompiledRule,
    this: &Value,
    old: OldSelf<'_>,
) -> Outcome {
    ctx.add_variable_from_value("self", this.clone());
    match old {
        OldSelf::None => {}
        OldSelf::Value(v) => ctx.add_variable_from_value("oldSelf", v.clone()),
        OldSelf::Optional(v) => {
            let opt = match v.and_then(|v| Box::<dyn Val>::try_from(v.clone()).ok()) {
                Some(b) => CelOptional::of(b),
                None => CelOptional::none(),
            };
            ctx.add_variable_as_val("oldSelf", Box::new(opt));
        }
    }
    match rule.program.execute(ctx) {
        Ok(Value::Bool(true)) => Outcome::Pass,
        Ok(Value::Bool(false)) => {
            let default = if rule.message.is_empty() {
                format!("failed rule: {}", rule.rule.trim())
            } else {
                rule.message.clone()
            };
            let msg = match &rule.message_expression {
                Some(p) => match p.execute(ctx) {
                    Ok(Value::String(s)) if !s.trim().is_empty() && !s.contains('\n') => {
                        s.to_string()
                    }
                    _ => default,
                },
                None => default,
            };
            Outcome::Fail(msg)
        }
        Ok(other) => Outcome::Error(format!(
            "rule evaluated to {} instead of a bool evaluating rule: {}",
            other.type_of(),
            rule_error_string(rule)
        )),
        Err(e) => {
            let text = execution_error_text(&e);
            if text.starts_with("no such overload") {
                Outcome::Error(format!(
                    "'{text}': call arguments did not match a supported operator, function or macro signature for rule: {}",
                    rule_error_string(rule)
                ))
            } else {
                Outcome::Error(format!(
                    "{text} evaluating rule: {}",
                    rule_error_string(rule)
                ))
            }
        }
    }
}

/// Evaluates `program` with the given variables bound (admission policies: `object`,
/// `oldObject`, `request`, `variables`); a panic inside the CEL crate, or a deep
/// expression, is handled as in [`evaluate`]. Errors are worded as cel-go words them.
pub(crate) fn evaluate_program(
    program: &Program,
    depth: usize,
    vars: &[(&str, Value)],
) -> Result<Value, String> {
    let run = || {
        with_context(|ctx| {
            for (name, v) in vars {
                ctx.add_variable_from_value(*name, v.clone());
            }
            program.execute(ctx).map_err(|e| execution_error_text(&e))
        })
    };
    let internal = || Err("internal error evaluating the expression".to_string());
    if depth > INLINE_DEPTH {
        return on_big_stack(run).unwrap_or_else(internal);
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| internal())
}

/// kube-apiserver's `ruleErrorString`: the message if any, else the rule.
fn rule_error_string(rule: &CompiledRule) -> String {
    if rule.message.is_empty() {
        rule.rule.trim().to_string()
    } else {
        rule.message.clone()
    }
}

/// Words runtime errors the way cel-go does where they differ.
fn execution_error_text(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        ExecutionError::NoSuchOverload { .. } => "no such overload".to_string(),
        ExecutionError::DivisionByZero(_) => "division by zero".to_string(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".to_string(),
        ExecutionError::IndexOutOfBounds(i) => format!("index out of bounds: {i:?}"),
        other => other.to_string(),
    }
}

/// A quantity as a CEL opaque value.
#[derive(Debug, PartialEq, Eq)]
struct CelQuantity(Quantity);

impl Opaque for CelQuantity {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Quantity"
    }
}

fn quantity_of(v: &Value) -> Result<Quantity, ExecutionError> {
    match v {
        Value::Opaque(o) => o
            .downcast_ref::<CelQuantity>()
            .map(|q| q.0)
            .ok_or_else(|| ExecutionError::function_error("quantity", "not a quantity")),
        Value::Int(i) => Ok(Quantity {
            nanos: i128::from(*i) * 1_000_000_000,
        }),
        _ => Err(ExecutionError::function_error("quantity", "not a quantity")),
    }
}

fn qv(q: Quantity) -> Value {
    Value::Opaque(Arc::new(CelQuantity(q)))
}

fn cmp_to_int(o: std::cmp::Ordering) -> i64 {
    match o {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    }
}

fn list_of(v: &Value) -> Result<Arc<Vec<Value>>, ExecutionError> {
    match v {
        Value::List(l) => Ok(l.clone()),
        _ => Err(ExecutionError::function_error("list", "not a list")),
    }
}

fn value_lt(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::UInt(x), Value::UInt(y)) => Some(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Opaque(_), Value::Opaque(_)) => {
            let (x, y) = (quantity_of(a).ok()?, quantity_of(b).ok()?);
            Some(x.cmp(&y))
        }
        _ => None,
    }
}

fn regex_for(ftx: &FunctionContext, pattern: &str) -> Result<regex::Regex, ExecutionError> {
    regex::Regex::new(pattern).map_err(|e| ftx.error(format!("invalid regex: {e}")))
}

/// Registers the Kubernetes CEL libraries implemented here.
fn register_functions(ctx: &mut Context<'_, '_>) {
    // A clash with a standard overload would only disable that one function;
    // `compile_expression` keeps the supported list in step (see tests).
    let _ = ctx.add_function(
        "quantity",
        |ftx: &FunctionContext, s: Arc<String>| -> Result<Value, ExecutionError> {
            Quantity::parse(&s)
                .map(qv)
                .ok_or_else(|| ftx.error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
        },
    );
    let _ = ctx.add_function("isQuantity", |s: Arc<String>| -> bool {
        Quantity::parse(&s).is_some()
    });
    let _ = ctx.add_function(
        "compareTo",
        |This(a): This<Value>, b: Value| -> Result<i64, ExecutionError> {
            Ok(cmp_to_int(quantity_of(&a)?.cmp(&quantity_of(&b)?)))
        },
    );
    let _ = ctx.add_function(
        "isGreaterThan",
        |This(a): This<Value>, b: Value| -> Result<bool, ExecutionError> {
            Ok(quantity_of(&a)? > quantity_of(&b)?)
        },
    );
    let _ = ctx.add_function(
        "isLessThan",
        |This(a): This<Value>, b: Value| -> Result<bool, ExecutionError> {
            Ok(quantity_of(&a)? < quantity_of(&b)?)
        },
    );
    let _ = ctx.add_function(
        "asInteger",
        |ftx: &FunctionContext, This(a): This<Value>| -> Result<i64, ExecutionError> {
            quantity_of(&a)?
                .as_integer()
                .ok_or_else(|| ftx.error("cannot convert value to integer"))
        },
    );
    let _ = ctx.add_function(
        "asApproximateFloat",
        |This(a): This<Value>| -> Result<f64, ExecutionError> { Ok(quantity_of(&a)?.as_f64()) },
    );
    let _ = ctx.add_function(
        "isInteger",
        |This(a): This<Value>| -> Result<bool, ExecutionError> {
            Ok(quantity_of(&a)?.as_integer().is_some())
        },
    );
    let _ = ctx.add_function(
        "sign",
        |This(a): This<Value>| -> Result<i64, ExecutionError> { Ok(quantity_of(&a)?.sign()) },
    );
    let _ = ctx.add_function(
        "add",
        |ftx: &FunctionContext, This(a): This<Value>, b: Value| -> Result<Value, ExecutionError> {
            let n = quantity_of(&a)?
                .nanos
                .checked_add(quantity_of(&b)?.nanos)
                .ok_or_else(|| ftx.error("overflow"))?;
            Ok(qv(Quantity { nanos: n }))
        },
    );
    let _ = ctx.add_function(
        "sub",
        |ftx: &FunctionContext, This(a): This<Value>, b: Value| -> Result<Value, ExecutionError> {
            let n = quantity_of(&a)?
                .nanos
                .checked_sub(quantity_of(&b)?.nanos)
                .ok_or_else(|| ftx.error("overflow"))?;
            Ok(qv(Quantity { nanos: n }))
        },
    );
    let _ = ctx.add_function(
        "find",
        |ftx: &FunctionContext,
         This(s): This<Arc<String>>,
         p: Arc<String>|
         -> Result<Value, ExecutionError> {
            let re = regex_for(ftx, &p)?;
            Ok(Value::String(Arc::new(
                re.find(&s)
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default(),
            )))
        },
    );
    let _ = ctx.add_function(
        "findAll",
        |ftx: &FunctionContext,
         This(s): This<Arc<String>>,
         p: Arc<String>|
         -> Result<Value, ExecutionError> {
            let re = regex_for(ftx, &p)?;
            let all: Vec<Value> = re
                .find_iter(&s)
                .map(|m| Value::String(Arc::new(m.as_str().to_string())))
                .collect();
            Ok(Value::List(Arc::new(all)))
        },
    );
    let _ = ctx.add_function(
        "isSorted",
        |This(l): This<Value>| -> Result<bool, ExecutionError> {
            let l = list_of(&l)?;
            Ok(l.windows(2).all(|w| {
                matches!(
                    value_lt(&w[0], &w[1]),
                    Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                )
            }))
        },
    );
    let _ = ctx.add_function(
        "sum",
        |ftx: &FunctionContext, This(l): This<Value>| -> Result<Value, ExecutionError> {
            let l = list_of(&l)?;
            let mut int: i64 = 0;
            let mut float: f64 = 0.0;
            let mut is_float = false;
            for v in l.iter() {
                match v {
                    Value::Int(i) => {
                        int = int
                            .checked_add(*i)
                            .ok_or_else(|| ftx.error("integer overflow"))?;
                    }
                    Value::Float(f) => {
                        is_float = true;
                        float += f;
                    }
                    _ => return Err(ftx.error("no such overload")),
                }
            }
            Ok(if is_float {
                Value::Float(float + int as f64)
            } else {
                Value::Int(int)
            })
        },
    );
    let _ = ctx.add_function(
        "sets.contains",
        |a: Value, b: Value| -> Result<bool, ExecutionError> {
            let (a, b) = (list_of(&a)?, list_of(&b)?);
            Ok(b.iter().all(|x| a.contains(x)))
        },
    );
    let _ = ctx.add_function(
        "sets.equivalent",
        |a: Value, b: Value| -> Result<bool, ExecutionError> {
            let (a, b) = (list_of(&a)?, list_of(&b)?);
            Ok(b.iter().all(|x| a.contains(x)) && a.iter().all(|x| b.contains(x)))
        },
    );
    let _ = ctx.add_function(
        "sets.intersects",
        |a: Value, b: Value| -> Result<bool, ExecutionError> {
            let (a, b) = (list_of(&a)?, list_of(&b)?);
            Ok(b.iter().any(|x| a.contains(x)))
        },
    );
}

/// Converts a JSON value to a CEL value; `number_fields` tells whether the
/// schema says `type: number` (so integers become doubles there).
pub(crate) fn to_cel(v: &serde_json::Value, as_double: bool) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if as_double {
                Value::Float(n.as_f64().unwrap_or(0.0))
            } else if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => {
            Value::List(Arc::new(a.iter().map(|x| to_cel(x, false)).collect()))
        }
        serde_json::Value::Object(m) => {
            let map: std::collections::HashMap<Key, Value> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v, false)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// The top-level fields of `self` and `oldSelf` that `exprs` read, when they read
/// them only by selecting a field (`self.a`, `has(self.a)`, `oldSelf.a.b`, `self.l.all(..)`);
/// `None` when one uses a whole value (`self == oldSelf`, `size(self)`, `self.all(..)`,
/// `oldSelf.value()`, `self.?a`) or binds a comprehension variable of either name.
///
/// Why: binding `self` and `oldSelf` to maps holding only these fields gives such an
/// expression exactly the result (and error) the whole objects give: each field it
/// selects is present or absent, with the same value, in both, and it can observe
/// nothing else. Validation then converts only those fields into CEL values: the
/// BatchJob spec's transition rule on `cancel`, evaluated on every status write
/// (kube-apiserver does not ratchet rules that use `oldSelf`), converted the whole
/// spec twice per write.
pub(crate) fn selected_fields(exprs: &[&cel::common::ast::IdedExpr]) -> Option<Vec<String>> {
    use cel::common::ast::{EntryExpr, Expr, IdedExpr};
    fn is_bound(name: &str) -> bool {
        name == "self" || name == "oldSelf"
    }
    fn walk(e: &IdedExpr, out: &mut Vec<String>) -> bool {
        match &e.expr {
            Expr::Select(s) => match &s.operand.expr {
                Expr::Ident(n) if is_bound(n) => {
                    out.push(s.field.clone());
                    true
                }
                _ => walk(&s.operand, out),
            },
            Expr::Ident(n) => !is_bound(n),
            Expr::Call(c) => {
                c.target.as_deref().is_none_or(|t| walk(t, out))
                    && c.args.iter().all(|a| walk(a, out))
            }
            Expr::Comprehension(c) => {
                !is_bound(&c.iter_var)
                    && !c.iter_var2.as_deref().is_some_and(is_bound)
                    && !is_bound(&c.accu_var)
                    && [
                        &c.iter_range,
                        &c.accu_init,
                        &c.loop_cond,
                        &c.loop_step,
                        &c.result,
                    ]
                    .into_iter()
                    .all(|x| walk(x, out))
            }
            Expr::List(l) => l.elements.iter().all(|x| walk(x, out)),
            Expr::Map(m) => m.entries.iter().all(|en| entry(&en.expr, out)),
            Expr::Struct(s) => s.entries.iter().all(|en| entry(&en.expr, out)),
            Expr::Literal(_) | Expr::Unspecified => true,
        }
    }
    fn entry(e: &EntryExpr, out: &mut Vec<String>) -> bool {
        match e {
            EntryExpr::MapEntry(me) => walk(&me.key, out) && walk(&me.value, out),
            EntryExpr::StructField(f) => walk(&f.value, out),
        }
    }
    let mut out = Vec::new();
    if !exprs.iter().all(|e| walk(e, &mut out)) {
        return None;
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The nesting depth of an expression tree.
pub(crate) fn ast_depth(e: &cel::common::ast::IdedExpr) -> usize {
    use cel::common::ast::{EntryExpr, Expr};
    let children: Vec<&cel::common::ast::IdedExpr> = match &e.expr {
        Expr::Call(c) => c
            .target
            .iter()
            .map(std::convert::AsRef::as_ref)
            .chain(c.args.iter())
            .collect(),
        Expr::Select(s) => vec![s.operand.as_ref()],
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m
            .entries
            .iter()
            .flat_map(|en| match &en.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .flat_map(|en| match &en.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        _ => Vec::new(),
    };
    1 + children.into_iter().map(ast_depth).max().unwrap_or(0)
}

/// Type-checks the field selections of a rule against the schema it sits on,
/// as cel-go's checker does for CRD rules: `self.nope` on an object without
/// such a property is a compile error ("undefined field 'nope'").
pub(crate) fn check_fields(
    program: &Program,
    node: &super::compile::Node,
    is_root: bool,
) -> Result<(), String> {
    use super::compile::Node;
    use cel::common::ast::{EntryExpr, Expr, IdedExpr};

    enum Resolved<'a> {
        Known(&'a Node),
        Dynamic,
    }

    fn lookup<'a>(n: &'a Node, field: &str, root: bool) -> Result<Resolved<'a>, String> {
        if let Some(p) = n.property(field) {
            return Ok(Resolved::Known(p));
        }
        if root && matches!(field, "apiVersion" | "kind" | "metadata") {
            return Ok(Resolved::Dynamic);
        }
        if let Some(a) = n.additional.as_deref() {
            return Ok(Resolved::Known(a));
        }
        if n.preserve_unknown || n.ty.as_deref() != Some("object") {
            return Ok(Resolved::Dynamic);
        }
        Err(format!("undefined field '{field}'"))
    }

    fn resolve<'a>(
        e: &IdedExpr,
        node: &'a Node,
        root: bool,
    ) -> Result<Resolved<'a>, (u64, String)> {
        match &e.expr {
            Expr::Ident(name) if name == "self" || name == "oldSelf" => Ok(Resolved::Known(node)),
            Expr::Select(s) => match resolve(&s.operand, node, root)? {
                Resolved::Known(n) => {
                    let at_root = root && std::ptr::eq(n, node);
                    lookup(n, &s.field, at_root).map_err(|m| (e.id, m))
                }
                Resolved::Dynamic => Ok(Resolved::Dynamic),
            },
            Expr::Call(c) if c.func_name == "_[_]" && c.args.len() == 2 => {
                match resolve(&c.args[0], node, root)? {
                    Resolved::Known(n) => Ok(match (n.items.as_deref(), n.additional.as_deref()) {
                        (Some(i), _) => Resolved::Known(i),
                        (None, Some(a)) => Resolved::Known(a),
                        _ => Resolved::Dynamic,
                    }),
                    Resolved::Dynamic => Ok(Resolved::Dynamic),
                }
            }
            _ => Ok(Resolved::Dynamic),
        }
    }

    fn walk(e: &IdedExpr, node: &Node, root: bool) -> Result<(), (u64, String)> {
        match &e.expr {
            Expr::Select(s) => {
                resolve(e, node, root)?;
                walk(&s.operand, node, root)
            }
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    walk(t, node, root)?;
                }
                if c.func_name == "_[_]" {
                    resolve(e, node, root)?;
                }
                c.args.iter().try_for_each(|a| walk(a, node, root))
            }
            Expr::Comprehension(c) => {
                for x in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    walk(x, node, root)?;
                }
                Ok(())
            }
            Expr::List(l) => l.elements.iter().try_for_each(|x| walk(x, node, root)),
            Expr::Map(m) => m.entries.iter().try_for_each(|en| match &en.expr {
                EntryExpr::MapEntry(me) => {
                    walk(&me.key, node, root).and_then(|_| walk(&me.value, node, root))
                }
                EntryExpr::StructField(f) => walk(&f.value, node, root),
            }),
            Expr::Struct(s) => s.entries.iter().try_for_each(|en| match &en.expr {
                EntryExpr::MapEntry(me) => {
                    walk(&me.key, node, root).and_then(|_| walk(&me.value, node, root))
                }
                EntryExpr::StructField(f) => walk(&f.value, node, root),
            }),
            _ => Ok(()),
        }
    }

    walk(program.expression(), node, is_root).map_err(|(id, msg)| {
        match program.source_info().offset_for(id) {
            Some((line, col)) => format!("compilation failed: ERROR: <input>:{line}:{col}: {msg}"),
            None => format!("compilation failed: ERROR: <input>: {msg}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src: &str) -> CompiledRule {
        CompiledRule {
            rule: src.to_string(),
            program: compile_expression(src).unwrap_or_else(|e| panic!("{src}: {e}")),
            message: String::new(),
            message_expression: None,
            field_path: None,
            reason: None,
            uses_old_self: src.contains("oldSelf"),
            optional_old_self: false,
            shown: String::new(),
            depth: 1,
            fields: None,
        }
    }

    fn eval(src: &str, this: serde_json::Value) -> Outcome {
        evaluate(&rule(src), &to_cel(&this, false), OldSelf::None)
    }

    #[test]
    fn every_supported_function_works() {
        let cases = [
            (
                "size(self.a) == 2 && self.a.size() == 2",
                serde_json::json!({"a": [1, 2]}),
            ),
            ("self.s.matches('^a+$')", serde_json::json!({"s": "aa"})),
            (
                "self.s.contains('b') && self.s.startsWith('a') && self.s.endsWith('c')",
                serde_json::json!({"s": "abc"}),
            ),
            (
                "int('1') == 1 && uint(1) == 1u && double(1) == 1.0 && string(1) == '1' && bool('true') && bytes('a') == b'a'",
                serde_json::json!({}),
            ),
            ("type(1) == int && dyn(1) == 1", serde_json::json!({})),
            (
                "self.s.charAt(0) == 'a' && self.s.indexOf('b') == 1 && self.s.lastIndexOf('c') == 2",
                serde_json::json!({"s": "abc"}),
            ),
            (
                "self.s.lowerAscii() == 'abc' && self.s.upperAscii() == 'ABC'",
                serde_json::json!({"s": "aBc"}),
            ),
            (
                "self.s.replace('a', 'x') == 'xbc' && self.s.split('b') == ['a', 'c'] && self.s.substring(1) == 'bc'",
                serde_json::json!({"s": "abc"}),
            ),
            (
                "' a '.trim() == 'a' && ['a','b'].join('-') == 'a-b' && 'abc'.reverse() == 'cba' && strings.quote('a') == '\"a\"'",
                serde_json::json!({}),
            ),
            ("'%s'.format(['x']) == 'x'", serde_json::json!({})),
            (
                "[1,2,3].slice(0, 2) == [1, 2] && [[1],[2]].flatten() == [1, 2] && [1,1].distinct() == [1] && [2,1].sort() == [1, 2]",
                serde_json::json!({}),
            ),
            (
                "math.greatest(1, 2) == 2 && math.least(1, 2) == 1 && math.abs(-1) == 1",
                serde_json::json!({}),
            ),
            (
                "optional.of(1).hasValue() && optional.none().orValue(2) == 2 && optional.of(3).value() == 3",
                serde_json::json!({}),
            ),
            (
                "quantity('2Gi').compareTo(quantity('1Gi')) == 1 && isQuantity('1m') && !isQuantity('x')",
                serde_json::json!({}),
            ),
            (
                "quantity(self.m).isGreaterThan(quantity('1Gi')) && quantity('1').isLessThan(quantity('2'))",
                serde_json::json!({"m": "2Gi"}),
            ),
            (
                "quantity('2k').asInteger() == 2000 && quantity('500m').asApproximateFloat() == 0.5 && !quantity('500m').isInteger() && quantity('-1').sign() == -1",
                serde_json::json!({}),
            ),
            (
                "quantity('1').add(quantity('500m')) == quantity('1500m') && quantity('1').sub(1) == quantity('0')",
                serde_json::json!({}),
            ),
            (
                "'abc123'.find('[0-9]+') == '123' && 'a1b2'.findAll('[0-9]') == ['1', '2']",
                serde_json::json!({}),
            ),
            (
                "[1,2,3].isSorted() && [1,2,3].sum() == 6",
                serde_json::json!({}),
            ),
            (
                "sets.contains([1,2], [1]) && sets.equivalent([1,2], [2,1]) && sets.intersects([1], [1,3])",
                serde_json::json!({}),
            ),
            (
                "self.l.all(x, x > 0) && self.l.exists(x, x == 2) && self.l.exists_one(x, x == 3) && self.l.map(x, x * 2) == [2, 4, 6] && self.l.filter(x, x > 1) == [2, 3]",
                serde_json::json!({"l": [1, 2, 3]}),
            ),
            ("has(self.a) && !has(self.b)", serde_json::json!({"a": 1})),
        ];
        for (src, this) in cases {
            assert_eq!(eval(src, this), Outcome::Pass, "{src}");
        }
    }

    #[test]
    fn unsupported_functions_are_refused() {
        for src in [
            "url(self.u).getHost() == 'a'",
            "ip('1.2.3.4').family() == 4",
            "self.x.semver()",
            "max(1, 2) == 2",
            "[1].min() == 1",
            "timestamp('2020-01-01T00:00:00Z') > timestamp('2019-01-01T00:00:00Z')",
        ] {
            let e = compile_expression(src).map(|_| ()).unwrap_err();
            assert!(e.contains("not supported"), "{src}: {e}");
        }
        assert!(compile_expression("self.a ==").unwrap_err().starts_with(
            "compilation failed: ERROR: <input>:1:10: Syntax error: mismatched input '<EOF>'"
        ));
        assert!(
            compile_expression("foo == 1")
                .unwrap_err()
                .contains("undeclared reference to 'foo'")
        );
        assert!(compile_expression("self.l.all(x, x > 0)").is_ok());
    }

    #[test]
    fn failure_and_error_messages() {
        assert_eq!(
            eval("self.a > 1", serde_json::json!({"a": 1})),
            Outcome::Fail("failed rule: self.a > 1".into())
        );
        assert_eq!(
            eval("self.b > 1", serde_json::json!({"a": 1})),
            Outcome::Error("no such key: b evaluating rule: self.b > 1".into())
        );
        let mut r = rule("self.a > 1");
        r.message = "a must be > 1".into();
        r.message_expression = compile_expression("'a is ' + string(self.a)").ok();
        assert_eq!(
            evaluate(
                &r,
                &to_cel(&serde_json::json!({"a": 1}), false),
                OldSelf::None
            ),
            Outcome::Fail("a is 1".into())
        );
        r.message_expression = compile_expression("self.a").ok();
        assert_eq!(
            evaluate(
                &r,
                &to_cel(&serde_json::json!({"a": 1}), false),
                OldSelf::None
            ),
            Outcome::Fail("a must be > 1".into())
        );
    }

    #[test]
    fn deep_expressions_do_not_overflow_the_stack() {
        // Run on a 2 MiB stack, like a server worker thread.
        let worker = std::thread::Builder::new().stack_size(2 << 20).spawn(|| {
            let parens = format!("{}1{} == 1", "(".repeat(60), ")".repeat(60));
            let sum = format!("{} == 201", "1 + ".repeat(200) + "1");
            let mut out = Vec::new();
            for src in [parens, sum] {
                let c = compile_expression_with_depth(&src).unwrap_or_else(|e| panic!("{e}"));
                let (program, depth) = (c.program, c.depth);
                let mut r = rule("true");
                r.program = program;
                r.depth = depth;
                out.push(evaluate(&r, &Value::Null, OldSelf::None));
            }
            let too_deep = format!("{} == 1", "1 + ".repeat(300) + "1");
            out.push(match compile_expression(&too_deep) {
                Ok(_) => Outcome::Pass,
                Err(e) => Outcome::Error(e),
            });
            out
        });
        let out = worker
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], Outcome::Pass);
        assert_eq!(out[1], Outcome::Pass);
        assert!(
            matches!(&out[2], Outcome::Error(e) if e.contains("depth") || e.contains("Recursion limit")),
            "{:?}",
            out[2]
        );
    }

    #[test]
    fn old_self_binding() {
        let r = rule("self >= oldSelf");
        assert_eq!(
            evaluate(&r, &Value::Int(2), OldSelf::Value(&Value::Int(1))),
            Outcome::Pass
        );
        assert_eq!(
            evaluate(&r, &Value::Int(0), OldSelf::Value(&Value::Int(1))),
            Outcome::Fail("failed rule: self >= oldSelf".into())
        );
        let r = rule("!oldSelf.hasValue() || self >= oldSelf.value()");
        assert_eq!(
            evaluate(&r, &Value::Int(0), OldSelf::Optional(None)),
            Outcome::Pass
        );
        assert_eq!(
            evaluate(&r, &Value::Int(0), OldSelf::Optional(Some(&Value::Int(1)))),
            Outcome::Fail("failed rule: !oldSelf.hasValue() || self >= oldSelf.value()".into())
        );
    }

    fn fields(src: &str) -> Option<Vec<String>> {
        let p = compile_expression(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        selected_fields(&[p.expression()])
    }

    #[test]
    fn selected_fields_are_the_fields_a_rule_can_observe() {
        assert_eq!(
            fields("!has(oldSelf.cancel) || (has(self.cancel) && self.cancel == oldSelf.cancel)"),
            Some(vec!["cancel".to_string()])
        );
        assert_eq!(
            fields("self.b.c == 1 && self.a.all(x, x > 0) && oldSelf.d.size() == 0"),
            Some(vec!["a".to_string(), "b".to_string(), "d".to_string()])
        );
        assert_eq!(fields("1 == 1"), Some(vec![]));
        // whole values: no projection
        for src in [
            "self == oldSelf",
            "size(self) > 0",
            "self.size() > 0",
            "self.all(k, k != '')",
            "'a' in self",
            "self.?a.hasValue()",
            "[{'a': 1}].all(self, self.a == 1) && self.b == 1",
            "[self][0].a == 1",
            "{'k': self}.k.a == 1",
        ] {
            assert_eq!(fields(src), None, "{src}");
        }
    }

    /// A rule with selected fields gives the same outcome on the objects cut to those
    /// fields as on the whole objects (what validation binds).
    #[test]
    fn a_rule_on_its_selected_fields_gives_what_it_gives_on_the_whole_objects() {
        let cut = |v: &serde_json::Value, keep: &[String]| {
            let m = v.as_object().map(|m| {
                m.iter()
                    .filter(|(k, _)| keep.contains(k))
                    .map(|(k, x)| (k.clone(), x.clone()))
                    .collect::<serde_json::Map<_, _>>()
            });
            serde_json::Value::Object(m.unwrap_or_default())
        };
        let objects = [
            serde_json::json!({}),
            serde_json::json!({"queue": "q", "cancel": {"reason": "r"}}),
            serde_json::json!({"queue": "q", "cancel": {"reason": "other"}, "a": [1, 2]}),
            serde_json::json!({"cancel": null, "a": [], "b": {"c": 1}}),
            serde_json::json!({"a": [0, -1], "b": {"c": 2}, "d": "x"}),
        ];
        let rules = [
            "!has(oldSelf.cancel) || (has(self.cancel) && self.cancel == oldSelf.cancel)",
            "self.b.c == 1",
            "has(self.a) && self.a.all(x, x > 0)",
            "self.missing == 1",
            "has(self.d) ? self.d.startsWith('x') : oldSelf.queue == 'q'",
        ];
        for src in rules {
            let r = rule(src);
            let keep = fields(src).unwrap_or_else(|| panic!("{src}: no fields"));
            for new in &objects {
                for old in &objects {
                    let whole =
                        evaluate(&r, &to_cel(new, false), OldSelf::Value(&to_cel(old, false)));
                    let projected = evaluate(
                        &r,
                        &to_cel(&cut(new, &keep), false),
                        OldSelf::Value(&to_cel(&cut(old, &keep), false)),
                    );
                    assert_eq!(whole, projected, "{src} on {new} (old {old})");
                }
            }
        }
    }
}
