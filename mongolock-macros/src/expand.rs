//! Rewrites the annotated `async fn`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, Ident, ItemFn, LitStr, Member, Pat, ReturnType, Stmt};

use crate::args::{Args, Errors, Key, Millis, Renew};
use crate::template::{self, Segment};

/// The whole macro: on any error, the function is emitted unchanged next to
/// the errors, so the rest of the crate (and the IDE) still sees it.
pub(crate) fn mongo_locked(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[mongo_locked]` applies to an `async fn` with a body",
            );
            return with_error(item, error);
        }
    };
    let mut errors = Errors::default();
    if let Some(constness) = &func.sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            "`#[mongo_locked]` cannot be used on a `const fn`",
        ));
    } else if func.sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            func.sig.fn_token,
            "`#[mongo_locked]` works on `async fn` only: the lock is taken and released with `.await`",
        ));
    }
    let args = match Args::parse(attr) {
        Ok(args) => Some(args),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let key = args.as_ref().and_then(|args| match &args.key {
        None => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing `key = \"...\"`: `#[mongo_locked(key = \"job:{arg}\")]`",
            ));
            None
        }
        Some(Key::Expr(expr)) => Some(quote! {
            ::core::convert::Into::<::std::string::String>::into(#expr)
        }),
        Some(Key::Template(lit)) => match key_from_template(lit, &func) {
            Ok(tokens) => Some(tokens),
            Err(e) => {
                errors.push(e);
                None
            }
        },
    });
    if let Err(e) = errors.finish() {
        return with_error(item, e);
    }
    match (args, key) {
        (Some(args), Some(key)) => wrap(&args, key, func),
        _ => item,
    }
}

fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#item #error)
}

/// `format!(...)` for a key template, each placeholder checked against the
/// names the function's arguments bind.
fn key_from_template(lit: &LitStr, func: &ItemFn) -> syn::Result<TokenStream> {
    let segments =
        template::parse(&lit.value()).map_err(|msg| syn::Error::new_spanned(lit, msg))?;
    let bound = bound_names(func);
    let mut values = Vec::new();
    for segment in &segments {
        let Segment::Arg(path) = segment else {
            continue;
        };
        let root = &path[0];
        if !bound.iter().any(|b| b == root) {
            return Err(syn::Error::new_spanned(
                lit,
                format!(
                    "unknown placeholder `{{{root}}}`: `{}` has no argument `{root}` (it has: {})",
                    func.sig.ident,
                    if bound.is_empty() {
                        "none".to_owned()
                    } else {
                        bound.join(", ")
                    }
                ),
            ));
        }
        // The argument idents take the literal's span, so they resolve to
        // the function's own arguments.
        let root = if root == "self" {
            quote_spanned!(lit.span()=> self)
        } else {
            let ident = Ident::new(root, lit.span());
            quote!(#ident)
        };
        let fields = path[1..].iter().map(|field| {
            let member = match field.parse::<u32>() {
                Ok(index) => Member::Unnamed(syn::Index {
                    index,
                    span: lit.span(),
                }),
                Err(_) => Member::Named(Ident::new(field, lit.span())),
            };
            quote!(.#member)
        });
        values.push(quote!(&#root #(#fields)*));
    }
    let format = LitStr::new(&template::format_string(&segments), lit.span());
    Ok(quote!(::std::format!(#format #(, #values)*)))
}

/// Every name the function's parameters bind, `self` included.
fn bound_names(func: &ItemFn) -> Vec<String> {
    let mut names = Vec::new();
    for input in &func.sig.inputs {
        match input {
            FnArg::Receiver(_) => names.push("self".to_owned()),
            FnArg::Typed(typed) => pattern_names(&typed.pat, &mut names),
        }
    }
    names
}

fn pattern_names(pat: &Pat, names: &mut Vec<String>) {
    match pat {
        Pat::Ident(p) => {
            names.push(p.ident.to_string());
            if let Some((_, sub)) = &p.subpat {
                pattern_names(sub, names);
            }
        }
        Pat::Tuple(p) => p.elems.iter().for_each(|p| pattern_names(p, names)),
        Pat::TupleStruct(p) => p.elems.iter().for_each(|p| pattern_names(p, names)),
        Pat::Struct(p) => p.fields.iter().for_each(|f| pattern_names(&f.pat, names)),
        Pat::Slice(p) => p.elems.iter().for_each(|p| pattern_names(p, names)),
        Pat::Reference(p) => pattern_names(&p.pat, names),
        Pat::Paren(p) => pattern_names(&p.pat, names),
        Pat::Type(p) => pattern_names(&p.pat, names),
        _ => {}
    }
}

/// The rewritten function: take the lock, run the body in an inner
/// `async move` block (so `return` and `?` leave the block, not the
/// function), release, return the body's result.
fn wrap(args: &Args, key: TokenStream, mut func: ItemFn) -> TokenStream {
    let (sig, block) = (&func.sig, &func.block);
    let krate = args
        .krate
        .as_ref()
        .map_or_else(|| quote!(::mongolock), |path| quote!(#path));
    let ret = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    let ret_span = sig.output.span();
    // Hidden names: mixed-site hygiene keeps them out of the user's reach.
    let hidden = |name: &str| format_ident!("__mongolock_{}", name, span = Span::mixed_site());
    let (lock, guard, error, result) = (
        hidden("lock"),
        hidden("guard"),
        hidden("error"),
        hidden("result"),
    );
    let from_lock_error = quote_spanned! {ret_span=>
        <#ret as #krate::__private::FromLockError>::from_lock_error
    };
    let lock_source = match &args.lock {
        Some(expr) => quote!(#expr),
        None => quote! {
            match #krate::__private::global() {
                ::core::result::Result::Ok(#lock) => #lock,
                ::core::result::Result::Err(#error) => return #from_lock_error(#error),
            }
        },
    };
    let duration = |m: &Millis| {
        let millis = m.millis;
        quote!(::core::time::Duration::from_millis(#millis))
    };
    let expires = args
        .expires
        .as_ref()
        .map(duration)
        .map(|d| quote!(.expires(#d)));
    let timeout = args
        .timeout
        .as_ref()
        .map(duration)
        .map(|d| quote!(.timeout(#d)));
    let fake_return = quote_spanned! {ret_span=>
        #[allow(
            unknown_lints,
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::needless_return
        )]
        if false {
            let #result: #ret = loop {};
            return #result;
        }
    };
    let owner = args.owner.as_ref().map(|o| quote!(.owner(#o)));
    let min_hold = args
        .min_hold
        .as_ref()
        .map(duration)
        .map(|d| quote!(.min_hold(#d)));
    let renew = match &args.renew {
        None | Some(Renew::Off) => None,
        Some(Renew::On) => Some(quote!(.renew(true))),
        Some(Renew::Every(m)) => {
            let d = duration(m);
            Some(quote!(.renew_every(#d)))
        }
    };
    let inner = quote! {
        async move {
            #fake_return
            #block
        }
    };
    // With renewal, a lost lock cancels the body at its next await point.
    let run = if renew.is_some() {
        quote! {
            match #krate::__private::until_lost(&#guard, #inner).await {
                ::core::result::Result::Ok(#result) => #result,
                ::core::result::Result::Err(#error) => {
                    #krate::__private::release(#guard).await;
                    return #from_lock_error(#error);
                }
            }
        }
    } else {
        quote!(#inner.await)
    };
    let body = quote! {
            let #guard = {
                let #lock: &#krate::MongoLock = #lock_source;
                match #lock.acquire(#key) #expires #timeout #renew #min_hold #owner .await {
                    ::core::result::Result::Ok(#guard) => #guard,
                    ::core::result::Result::Err(#error) => return #from_lock_error(#error),
                }
            };
            let #result = #run;
            #krate::__private::release(#guard).await;
            #result
    };
    // Everything around the body (attributes, docs, visibility, generics,
    // where-clauses) is kept as written.
    func.block.stmts = vec![Stmt::Expr(Expr::Verbatim(body), None)];
    quote!(#func)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(attr: TokenStream, item: TokenStream) -> String {
        let file: syn::File = syn::parse2(mongo_locked(attr, item)).expect("expansion parses");
        prettyplease::unparse(&file)
    }

    fn unparse(tokens: TokenStream) -> String {
        prettyplease::unparse(&syn::parse2(tokens).expect("expected code parses"))
    }

    #[test]
    fn template_key_with_options_expands_to_acquire_body_release() {
        let actual = expand(
            quote!(
                key = "report:{user.id}:{{x}}",
                expires = 60,
                timeout = "1500ms"
            ),
            quote! {
                /// Docs stay.
                pub async fn build(user: &User) -> Result<u64, AppError> {
                    Ok(user.id)
                }
            },
        );
        let expected = unparse(quote! {
            /// Docs stay.
            pub async fn build(user: &User) -> Result<u64, AppError> {
                let __mongolock_guard = {
                    let __mongolock_lock: &::mongolock::MongoLock = match ::mongolock::__private::global() {
                        ::core::result::Result::Ok(__mongolock_lock) => __mongolock_lock,
                        ::core::result::Result::Err(__mongolock_error) => {
                            return <Result<u64, AppError> as ::mongolock::__private::FromLockError>::from_lock_error(__mongolock_error)
                        }
                    };
                    match __mongolock_lock
                        .acquire(::std::format!("report:{}:{{x}}", &user.id))
                        .expires(::core::time::Duration::from_millis(60000u64))
                        .timeout(::core::time::Duration::from_millis(1500u64))
                        .await
                    {
                        ::core::result::Result::Ok(__mongolock_guard) => __mongolock_guard,
                        ::core::result::Result::Err(__mongolock_error) => {
                            return <Result<u64, AppError> as ::mongolock::__private::FromLockError>::from_lock_error(__mongolock_error)
                        }
                    }
                };
                let __mongolock_result = async move {
                    #[allow(
                        unknown_lints,
                        unreachable_code,
                        clippy::diverging_sub_expression,
                        clippy::empty_loop,
                        clippy::needless_return
                    )]
                    if false {
                        let __mongolock_result: Result<u64, AppError> = loop {};
                        return __mongolock_result;
                    }
                    {
                        Ok(user.id)
                    }
                }
                .await;
                ::mongolock::__private::release(__mongolock_guard).await;
                __mongolock_result
            }
        });
        assert_eq!(actual, expected);
    }

    #[test]
    fn lock_owner_and_crate_options_expand() {
        let actual = expand(
            quote!(
                key = self.key(),
                lock = &self.lock,
                owner = "me",
                crate = ::ml
            ),
            quote! {
                async fn run(&self) -> ml::Result<()> { Ok(()) }
            },
        );
        assert!(
            actual.contains("let __mongolock_lock: &::ml::MongoLock = &self.lock;"),
            "{actual}"
        );
        assert!(
            actual.contains(
                ".acquire(::core::convert::Into::<::std::string::String>::into(self.key()))"
            ),
            "{actual}"
        );
        assert!(actual.contains(".owner(\"me\")"), "{actual}");
        assert!(
            actual.contains("::ml::__private::release(__mongolock_guard)"),
            "{actual}"
        );
        assert!(!actual.contains("global()"), "{actual}");
    }

    #[test]
    fn misuse_keeps_the_function_and_adds_one_error() {
        let item = quote! { fn sync_job() -> Result<(), E> { Ok(()) } };
        let actual = mongo_locked(quote!(key = "k"), item.clone()).to_string();
        assert!(actual.starts_with(&item.to_string()), "{actual}");
        assert_eq!(actual.matches("compile_error").count(), 1, "{actual}");
    }

    #[test]
    fn errors_in_several_arguments_are_all_reported() {
        let actual = mongo_locked(
            quote!(key = "k", expires = 0, bogus = 1),
            quote! { async fn job() -> Result<(), E> { Ok(()) } },
        )
        .to_string();
        assert_eq!(actual.matches("compile_error").count(), 2, "{actual}");
    }

    #[test]
    fn placeholders_may_name_pattern_bindings_and_self() {
        let func: ItemFn = syn::parse2(quote! {
            async fn f(&self, Point { x, y: (a, b) }: Point, [first, ..]: [u8; 2], ref r @ _: u8) {}
        })
        .expect("parses");
        assert_eq!(bound_names(&func), ["self", "x", "a", "b", "first", "r"]);
    }
}
