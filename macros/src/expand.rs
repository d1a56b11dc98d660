//! Emits the function's companion items: a value that stands for the function, its
//! `ProcessFn` impl, `spawn` with the real parameter list, and the registration.
//!
//! For `fn square(x: u64) -> u64` in `mod m`, roughly:
//!
//! ```text
//! pub struct __process_fn_square { .. }           // hidden, zero-sized
//! pub const square: __process_fn_square = ..;     // `square(3)` derefs to the fn
//! #[cfg(doc)] pub fn square(x: u64) -> u64        // what the user's rustdoc shows instead
//! const _: () = {
//!     fn __process_fn_body_square(x: u64) -> u64 { body } // the user's fn, renamed
//!     impl Deref for __process_fn_square { type Target = fn(u64) -> u64; .. }
//!     impl ProcessFn for __process_fn_square { type Args = (u64,); type Output = u64;
//!         const NAME = "crate::m::square"; fn call((x,): (u64,)) -> u64 { square(x) } }
//!     impl __process_fn_square { pub fn spawn(&self, x: u64) -> Result<Process<u64>> }
//!     static __MULTIPROC_REGISTRATION: Registration = Registration::of::<__process_fn_square>(); // linkme
//! };
//! ```

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, ItemFn, Path};

use crate::attr::Args;
use crate::signature::{self, Errors, Spec};

/// The attribute's whole expansion. On errors, the function is still emitted as written, so
/// that the rest of the crate type-checks and only the real mistakes are reported.
pub(crate) fn process_fn(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = match syn::parse2::<Args>(args) {
        Ok(a) => a,
        Err(e) => {
            errors.add(e);
            Args::default()
        }
    };
    let item: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                "`#[process_fn]` goes on a free function such as `fn square(x: u64) -> u64 { .. }`",
            );
            return with_error(item, e);
        }
    };
    let spec = match signature::check(&item.sig) {
        Ok(spec) => Some(spec),
        Err(e) => {
            errors.add(e);
            None
        }
    };
    match (errors.finish(), spec) {
        (Ok(()), Some(spec)) => emit(&args, &item, &spec),
        (Err(e), _) => with_error(quote!(#item), e),
        (Ok(()), None) => unreachable!("a failed check reports an error"),
    }
}

fn with_error(mut tokens: TokenStream, error: syn::Error) -> TokenStream {
    tokens.extend(error.into_compile_error());
    tokens
}

/// How a type crosses: the general path, or as one block of bytes.
enum Block {
    /// `Vec<u8>`: through serde_bytes, the same bytes as the general path.
    Bytes,
    /// A `Vec` of plain numbers: their bytes as one block, its length in bytes first.
    Numbers,
}

/// Numbers whose `Vec` crosses as a block of their bytes.
const NUMBERS: [&str; 11] = ["u16", "u32", "u64", "u128", "i8", "i16", "i32", "i64", "i128", "f32", "f64"];

/// `Vec<u8>` or a `Vec` of plain numbers (also as `std::vec::Vec<..>`, `alloc::vec::Vec<..>`),
/// written out: a type alias is not seen, and simply takes the general path.
fn as_block(ty: &syn::Type) -> Option<Block> {
    let syn::Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    let prefix_ok = p.qself.is_none()
        && p.path.segments.iter().rev().skip(1).all(|s| s.ident == "std" || s.ident == "alloc" || s.ident == "vec");
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    if !prefix_ok || last.ident != "Vec" || args.args.len() != 1 {
        return None;
    }
    let Some(syn::GenericArgument::Type(syn::Type::Path(t))) = args.args.first() else { return None };
    let element = t.path.get_ident()?.to_string();
    match element.as_str() {
        "u8" => Some(Block::Bytes),
        e if NUMBERS.contains(&e) => Some(Block::Numbers),
        _ => None,
    }
}

fn is(attr: &Attribute, name: &str) -> bool {
    attr.path().is_ident(name)
}

fn emit(args: &Args, item: &ItemFn, spec: &Spec) -> TokenStream {
    let krate: Path = args.krate.clone().unwrap_or_else(|| syn::parse_quote!(::multiproc));
    let private = quote!(#krate::__private);
    let vis = &item.vis;
    let ident = &item.sig.ident;
    let marker = format_ident!("__process_fn_{}", ident);

    // Docs and deprecation describe the value users name; `cfg` gates every item; the rest
    // (inline, allow, must_use, ...) stays on the function.
    let cfgs: Vec<&Attribute> = item.attrs.iter().filter(|a| is(a, "cfg")).collect();
    let outer: Vec<&Attribute> = item.attrs.iter().filter(|a| is(a, "doc") || is(a, "deprecated")).collect();
    let inner: Vec<&Attribute> =
        item.attrs.iter().filter(|a| !is(a, "doc") && !is(a, "deprecated") && !is(a, "cfg")).collect();
    // The body goes in a function of another name, so that inside it the user's name still
    // means the value: `recurse.spawn(..)` from within `recurse` works.
    let body_ident = syn::Ident::new(&format!("__process_fn_body_{ident}"), ident.span());
    let mut sig = item.sig.clone();
    sig.ident = body_ident.clone();
    let block = &item.block;
    let doc_sig = &item.sig; // the signature as written, for rustdoc

    let names: Vec<_> = spec.params.iter().map(|p| &p.name).collect();
    let tys: Vec<_> = spec.params.iter().map(|p| &p.ty).collect();
    let output = &spec.output;
    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => {
            let s = ident.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #s))
        }
    };
    // One codec call per type, spanned where the user wrote the type: a type that is not
    // serializable is reported there (and only there).
    // A `Vec<u8>` goes through serde_bytes (the same bytes on the wire) and a `Vec` of plain
    // numbers as their bytes: one block instead of element by element, out of line when large.
    let encode_args = names.iter().zip(&tys).map(|(name, ty)| match as_block(ty) {
        Some(Block::Bytes) => quote_spanned! {ty.span()=> #private::encode_bytes("arguments", #name, __out)?; },
        Some(Block::Numbers) => quote_spanned! {ty.span()=> #private::encode_numbers("arguments", #name, __out)?; },
        None => quote_spanned! {ty.span()=> #private::encode_arg::<#ty>(#name, __out)?; },
    });
    let decode_args = tys.iter().map(|ty| match as_block(ty) {
        Some(Block::Bytes) => quote_spanned! {ty.span()=> __args.read_bytes()?, },
        Some(Block::Numbers) => quote_spanned! {ty.span()=> __args.read_numbers()?, },
        None => quote_spanned! {ty.span()=> __args.read::<#ty>()?, },
    });
    let (encode_output, decode_output) = match as_block(output) {
        Some(Block::Bytes) => (
            quote_spanned! {output.span()=> #private::encode_bytes("result", __output, __out) },
            quote_spanned! {output.span()=> __results.read_bytes() },
        ),
        Some(Block::Numbers) => (
            quote_spanned! {output.span()=> #private::encode_numbers("result", __output, __out) },
            quote_spanned! {output.span()=> __results.read_numbers() },
        ),
        None => (
            quote_spanned! {output.span()=> #private::encode_output::<#output>(__output, __out) },
            quote_spanned! {output.span()=> __results.read::<#output>() },
        ),
    };
    let spawn_doc = format!(
        "Starts `{ident}` in a new child process and returns its handle; \
         [`join`]({private_path}::Process::join) it for the result.",
        private_path = quote!(#private).to_string().replace(' ', ""),
    );
    let value_doc = format!(
        "\n\n*A process function:* call `{ident}(..)` to run it here, or `{ident}.spawn(..)` to run it in a child process."
    );

    quote! {
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
        #vis struct #marker {
            __private: (),
        }

        #(#cfgs)*
        #[cfg(not(doc))]
        #(#outer)*
        #[doc = #value_doc]
        #[allow(non_upper_case_globals)]
        #vis const #ident: #marker = #marker { __private: () };

        // In the user's rustdoc, the function as they wrote it (rustdoc does not check bodies,
        // so the crate's own `square.spawn(..)` calls still document).
        #(#cfgs)*
        #[cfg(doc)]
        #(#outer)*
        #[doc = #value_doc]
        #vis #doc_sig { ::core::unreachable!() }

        #(#cfgs)*
        const _: () = {
            #(#inner)*
            #sig #block

            #[automatically_derived]
            impl ::core::ops::Deref for #marker {
                type Target = fn(#(#tys),*) -> #output;
                fn deref(&self) -> &Self::Target {
                    const FUNCTION: fn(#(#tys),*) -> #output = #body_ident;
                    &FUNCTION
                }
            }

            #[automatically_derived]
            impl #private::ProcessFn for #marker {
                type Args = (#(#tys,)*);
                type Output = #output;
                const NAME: &'static str = #name;
                fn call((#(#names,)*): Self::Args) -> Self::Output {
                    #body_ident(#(#names),*)
                }
                #[allow(unused_variables)]
                fn encode_args(
                    (#(#names,)*): &Self::Args,
                    __out: &mut ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), #private::Error> {
                    #(#encode_args)*
                    ::core::result::Result::Ok(())
                }
                #[allow(unused_variables)]
                fn decode_args(
                    __args: &mut #private::ValueReader<'_>,
                ) -> ::core::result::Result<Self::Args, #private::Error> {
                    ::core::result::Result::Ok((#(#decode_args)*))
                }
                fn encode_output(
                    __output: &Self::Output,
                    __out: &mut ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), #private::Error> {
                    #encode_output
                }
                fn read_output(
                    __results: &mut #private::ValueReader<'_>,
                ) -> ::core::result::Result<Self::Output, #private::Error> {
                    #decode_output
                }
            }

            impl #marker {
                /// The stable name the child finds this function by.
                pub fn name(&self) -> &'static str {
                    <Self as #private::ProcessFn>::NAME
                }

                #[doc = #spawn_doc]
                pub fn spawn(&self, #(#names: #tys),*)
                    -> ::core::result::Result<#private::Process<#output>, #private::Error>
                {
                    #private::spawn(*self, (#(#names,)*))
                }
            }

            #[#private::linkme::distributed_slice(#private::REGISTRY)]
            #[linkme(crate = #private::linkme)]
            static __MULTIPROC_REGISTRATION: #private::Registration = #private::Registration::of::<#marker>();
        };
    }
}
