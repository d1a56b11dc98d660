//! The function's signature, checked: what a process function may take and return.
//!
//! Every problem is reported, each on the token at fault, with the fix in the message.

use syn::{FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Signature, Type};

/// One parameter: a plain name and a type.
pub(crate) struct Param {
    pub(crate) name: Ident,
    pub(crate) ty: Type,
}

/// A signature that can cross a process boundary.
pub(crate) struct Spec {
    pub(crate) params: Vec<Param>,
    /// The return type, `()` when there is none.
    pub(crate) output: Type,
}

/// Collects errors so that the user sees all of them at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// An error covering all of `tokens` (first to last token, on stable too).
    pub(crate) fn push(&mut self, tokens: impl quote::ToTokens, message: impl std::fmt::Display) {
        let e = syn::Error::new_spanned(tokens, message);
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn add(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Checks `sig` and extracts the parameters and result.
pub(crate) fn check(sig: &Signature) -> Result<Spec, syn::Error> {
    let mut errors = Errors::default();
    // A process function: the child finds one concrete, safe, synchronous function by name.
    if let Some(t) = &sig.constness {
        errors.push(t, "`#[process_fn]` functions cannot be `const`: remove `const`");
    }
    if let Some(t) = &sig.asyncness {
        errors.push(t, "`#[process_fn]` functions cannot be `async`: make it a plain `fn` and run an executor inside it if it needs one");
    }
    if let syn::Safety::Unsafe(t) = &sig.safety {
        errors.push(t, "`#[process_fn]` functions cannot be `unsafe`: a child calls it with no caller to uphold its contract; make it safe and keep the `unsafe` block inside");
    }
    if let Some(abi) = &sig.abi {
        errors.push(abi, "`#[process_fn]` functions cannot have an `extern` ABI: remove it");
    }
    if !sig.generics.params.is_empty() {
        errors.push(&sig.generics, "`#[process_fn]` functions cannot be generic: the child must find one concrete function by name; write a non-generic wrapper for each type you need");
    }
    if let Some(w) = &sig.generics.where_clause {
        errors.push(w, "`#[process_fn]` functions cannot have a `where` clause: they cannot be generic");
    }
    if let Some(v) = &sig.variadic {
        errors.push(v, "`#[process_fn]` functions cannot be variadic");
    }

    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => errors.push(
                r,
                "`#[process_fn]` functions cannot take `self`: put it outside the `impl` and pass the value as an ordinary parameter",
            ),
            FnArg::Typed(arg) => {
                let name = match &*arg.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(p.ident.clone()),
                    other => {
                        errors.push(
                            other,
                            "`#[process_fn]` parameters must be plain names such as `x: T`: take the whole value and destructure it inside the body",
                        );
                        None
                    }
                };
                check_type(&arg.ty, "parameters", &mut errors);
                if let Some(name) = name {
                    params.push(Param { name, ty: (*arg.ty).clone() });
                }
            }
        }
    }
    let output = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => {
            check_type(ty, "results", &mut errors);
            (**ty).clone()
        }
    };
    errors.finish()?;
    Ok(Spec { params, output })
}

/// Rejects the types that cannot cross a process boundary by value: borrows and `impl Trait`.
fn check_type(ty: &Type, role: &str, errors: &mut Errors) {
    match ty {
        Type::Reference(r) => {
            let verb = if role == "results" { "return" } else { "take" };
            let fix = match &*r.elem {
                Type::Path(p) if p.path.is_ident("str") => format!("{verb} a `String`"),
                Type::Slice(_) => format!("{verb} a `Vec<T>`"),
                _ => format!("{verb} the value itself (`T`, not `&T`)"),
            };
            errors.push(r, format!("`#[process_fn]` {role} cannot borrow: the value is copied to another process; {fix}"));
        }
        Type::ImplTrait(t) => errors.push(
            t,
            format!("`#[process_fn]` {role} cannot be `impl Trait`: the other process needs one concrete type; name the type"),
        ),
        Type::TraitObject(t) => errors.push(
            t,
            format!("`#[process_fn]` {role} cannot be trait objects: the other process needs one concrete type; name the type"),
        ),
        Type::Paren(p) => check_type(&p.elem, role, errors),
        Type::Group(g) => check_type(&g.elem, role, errors),
        Type::Tuple(t) => t.elems.iter().for_each(|e| check_type(e, role, errors)),
        Type::Array(a) => check_type(&a.elem, role, errors),
        Type::Slice(s) => check_type(&s.elem, role, errors),
        Type::Path(p) => {
            if let Some(q) = &p.qself {
                check_type(&q.ty, role, errors);
            }
            for seg in &p.path.segments {
                if let PathArguments::AngleBracketed(args) = &seg.arguments {
                    for arg in &args.args {
                        match arg {
                            GenericArgument::Type(t) => check_type(t, role, errors),
                            GenericArgument::Lifetime(l) if l.ident != "static" => errors.push(
                                l,
                                format!("`#[process_fn]` {role} cannot hold borrows: the value is copied to another process; use owned types"),
                            ),
                            _ => {}
                        }
                    }
                }
            }
        }
        _ => {}
    }
}
