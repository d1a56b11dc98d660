//! `#[child_init]`: a function every child process runs once, before its first call.
//!
//! For `fn setup() { .. }`:
//!
//! ```text
//! fn setup() { .. }                                  // unchanged: callable in the parent too
//! const _: () = {
//!     static __MULTIPROC_CHILD_INIT: ChildInit = ChildInit { name: "crate::setup", run: setup }; // linkme
//! };
//! ```

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{ItemFn, Path, ReturnType};

use crate::attr::Args;

/// The attribute's whole expansion: the function as written, and its registration; or the
/// function and an error that says what shape it must have.
pub(crate) fn child_init(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = match syn::parse2::<Args>(args) {
        Ok(a) => a,
        Err(e) => return with_error(item, e),
    };
    if let Some(name) = &args.name {
        return with_error(item, syn::Error::new(name.span(), "#[child_init] takes no `name`; only `crate = path`"));
    }
    let f: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let e = syn::Error::new(e.span(), "`#[child_init]` goes on a free function such as `fn setup() { .. }`");
            return with_error(item, e);
        }
    };
    let sig = &f.sig;
    let wrong = if !sig.inputs.is_empty() {
        Some((sig.inputs.span(), "a #[child_init] function takes no arguments: it runs in each child before any call"))
    } else if let ReturnType::Type(_, ty) = &sig.output {
        Some((ty.span(), "a #[child_init] function returns nothing; to fail, panic: the child reports it"))
    } else if !sig.generics.params.is_empty() {
        Some((sig.generics.span(), "a #[child_init] function cannot be generic"))
    } else if sig.asyncness.is_some() || matches!(sig.safety, syn::Safety::Unsafe(_)) || sig.constness.is_some() {
        Some((sig.span(), "a #[child_init] function is a plain `fn`: not async, const or unsafe"))
    } else {
        None
    };
    if let Some((span, message)) = wrong {
        return with_error(quote!(#f), syn::Error::new(span, message));
    }
    let krate: Path = args.krate.unwrap_or_else(|| syn::parse_quote!(::multiproc));
    let private = quote!(#krate::__private);
    let ident = &sig.ident;
    let name = ident.to_string();
    let cfgs = f.attrs.iter().filter(|a| a.path().is_ident("cfg"));
    quote! {
        #f

        #(#cfgs)*
        const _: () = {
            #[#private::linkme::distributed_slice(#private::CHILD_INITS)]
            #[linkme(crate = #private::linkme)]
            static __MULTIPROC_CHILD_INIT: #private::ChildInit = #private::ChildInit {
                name: ::core::concat!(::core::module_path!(), "::", #name),
                run: #ident,
            };
        };
    }
}

fn with_error(mut tokens: TokenStream, error: syn::Error) -> TokenStream {
    tokens.extend(error.into_compile_error());
    tokens
}
