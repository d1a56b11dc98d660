//! The attribute's own arguments: `#[process_fn(name = "...", crate = path)]`.

use syn::parse::{Parse, ParseStream};
use syn::{LitStr, Path, Token};

/// What `#[process_fn(...)]` was given.
#[derive(Default)]
pub(crate) struct Args {
    /// Registers the function under this name instead of `module_path::name`.
    pub(crate) name: Option<LitStr>,
    /// Where the `multiproc` crate is, when it is not `::multiproc`.
    pub(crate) krate: Option<Path>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut errors: Option<syn::Error> = None;
        let mut push = |e: syn::Error| match &mut errors {
            Some(all) => all.combine(e),
            None => errors = Some(e),
        };
        while !input.is_empty() {
            let key: syn::Ident = if input.peek(Token![crate]) {
                let k: Token![crate] = input.parse()?;
                syn::Ident::new("crate", k.span)
            } else {
                input.parse()?
            };
            input.parse::<Token![=]>()?;
            match key.to_string().as_str() {
                "name" => {
                    let lit: LitStr = input.parse()?;
                    if lit.value().is_empty() {
                        push(syn::Error::new(lit.span(), "`name` cannot be empty"));
                    }
                    if args.name.replace(lit).is_some() {
                        push(syn::Error::new(key.span(), "`name` given twice"));
                    }
                }
                "crate" => {
                    let path: Path =
                        if input.peek(LitStr) { input.parse::<LitStr>()?.parse()? } else { input.parse()? };
                    if args.krate.replace(path).is_some() {
                        push(syn::Error::new(key.span(), "`crate` given twice"));
                    }
                }
                other => {
                    push(syn::Error::new(
                        key.span(),
                        format!("unknown #[process_fn] argument `{other}`; the arguments are `name = \"...\"` and `crate = path`"),
                    ));
                    // skip the value to go on reporting
                    let _: syn::Expr = input.parse()?;
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        match errors {
            Some(e) => Err(e),
            None => Ok(args),
        }
    }
}
