//! Rewrites the annotated `async fn`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, Ident, ItemFn, LitStr, Member, Pat, ReturnType, Stmt};

use crate::args::{Args, Dur, Errors, Key, Renew};
use crate::template::{self, Segment};

/// The whole macro: on any error, the function is emitted unchanged next to
/// the errors, so the rest of the crate (and the IDE) still sees it.
///
/// Further `#[mongo_locked]` attributes below this one are expanded here
/// too, so that stacked locks nest in reading order: the top one is taken
/// first and released last.
pub(crate) fn mongo_locked(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[mongo_locked]` applies to an `async fn` with a body",
            );
            return with_error(item, error);
        }
    };
    let mut layers = vec![attr];
    let mut errors = Errors::default();
    func.attrs.retain(|a| {
        let ours = a
            .path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "mongo_locked");
        if ours {
            match &a.meta {
                syn::Meta::List(list) => layers.push(list.tokens.clone()),
                syn::Meta::Path(_) => layers.push(TokenStream::new()),
                syn::Meta::NameValue(nv) => errors.push(syn::Error::new_spanned(
                    nv,
                    "expected `#[mongo_locked(key = \"...\", ...)]`",
                )),
            }
        }
        !ours
    });
    check_shape(&func, &mut errors);
    let mut parsed = Vec::new();
    for attr in layers {
        let args = match Args::parse(attr) {
            Ok(args) => args,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let key = match &args.key {
            None => {
                errors.push(syn::Error::new(
                    Span::call_site(),
                    "missing `key = \"...\"`: `#[mongo_locked(key = \"job:{arg}\")]`",
                ));
                continue;
            }
            Some(Key::Expr(expr)) => quote! {
                ::core::convert::Into::<::std::string::String>::into(#expr)
            },
            Some(Key::Template(lit)) => match key_from_template(lit, &func) {
                Ok(tokens) => tokens,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
        };
        parsed.push((args, key));
    }
    if let Err(e) = errors.finish() {
        return with_error(quote!(#func), e);
    }
    // The bottom lock is wrapped first, so the top one ends up outermost.
    for (args, key) in parsed.iter().rev() {
        func = wrap(args, key, func);
    }
    quote!(#func)
}

/// Refuses what is not an `async fn`, or `#[async_trait]`'s rewrite of one,
/// naming the fix where the cause is known.
fn check_shape(func: &ItemFn, errors: &mut Errors) {
    if let Some(constness) = &func.sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            "`#[mongo_locked]` cannot be used on a `const fn`",
        ));
    } else if func.sig.asyncness.is_some() || boxed_async_block(&func.block).is_some() {
    } else if func
        .block
        .to_token_stream()
        .to_string()
        .contains("block_on")
    {
        errors.push(syn::Error::new_spanned(
            func.sig.fn_token,
            "`#[mongo_locked]` must come before (above) `#[tokio::main]` or `#[tokio::test]`, which have already turned this `async fn` into a plain one: write `#[mongo_locked(...)]` first, or put it on the job function that `main` or the test calls",
        ));
    } else {
        errors.push(syn::Error::new_spanned(
            func.sig.fn_token,
            "`#[mongo_locked]` works on `async fn` only: the lock is taken and released with `.await`",
        ));
    }
}

/// `#[async_trait]`'s rewrite of an `async fn`: a plain `fn` whose body is
/// `Box::pin(async move { .. })`. The lock is taken inside that block, so
/// inside the boxed future.
fn boxed_async_block(block: &syn::Block) -> Option<&Expr> {
    let [Stmt::Expr(Expr::Call(call), None)] = block.stmts.as_slice() else {
        return None;
    };
    let Expr::Path(path) = &*call.func else {
        return None;
    };
    let is_pin = path.path.segments.last().is_some_and(|s| s.ident == "pin");
    match call.args.first() {
        Some(arg @ Expr::Async(a)) if is_pin && call.args.len() == 1 && a.capture.is_some() => {
            Some(arg)
        }
        _ => None,
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
            let ident = ident(root, lit)?;
            quote!(#ident)
        };
        let mut fields = Vec::new();
        for field in &path[1..] {
            let member = match field.parse::<u32>() {
                Ok(index) => Member::Unnamed(syn::Index {
                    index,
                    span: lit.span(),
                }),
                Err(_) => Member::Named(ident(field, lit)?),
            };
            fields.push(quote!(.#member));
        }
        values.push(quote_spanned!(lit.span()=> &#root #(#fields)*));
    }
    let format = LitStr::new(&template::format_string(&segments), lit.span());
    // Spanned on the literal, so that a value that is not `Display` is
    // reported there.
    Ok(quote_spanned!(lit.span()=> ::std::format!(#format #(, #values)*)))
}

/// An identifier spanned on `lit`, raw (`r#type`) where the name is a
/// keyword; an error for the names that cannot be raw (`super`, `_`, ...).
fn ident(name: &str, lit: &LitStr) -> syn::Result<Ident> {
    if syn::parse_str::<Ident>(name).is_ok() {
        Ok(Ident::new(name, lit.span()))
    } else if ["self", "Self", "super", "crate", "_"].contains(&name) {
        Err(syn::Error::new_spanned(
            lit,
            format!("`{name}` cannot be a field in a key template; use `key = format!(...)`"),
        ))
    } else {
        Ok(Ident::new_raw(name, lit.span()))
    }
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
            names.push(syn::ext::IdentExt::unraw(&p.ident).to_string());
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
/// function), release, return the body's result. For `#[async_trait]`'s
/// rewrite, the same happens inside its boxed `async move` block.
fn wrap(args: &Args, key: &TokenStream, func: ItemFn) -> ItemFn {
    let krate = match (&args.krate, crate::krate::renamed()) {
        (Some(path), _) => quote!(#path),
        (None, Some(renamed)) => {
            let name = Ident::new(&renamed, Span::call_site());
            quote!(::#name)
        }
        (None, None) => quote!(::mongolock),
    };
    // The return type's first token (spans cannot be joined on stable).
    let ret_span = match &func.sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => func.sig.output.span(),
    };
    // Hidden names: mixed-site hygiene keeps them out of the user's reach.
    // The body's output is kept while the lock is released, so the future
    // is `Send` only if the output is: the name says so in the compiler's
    // "not `Send`" error.
    let hidden = |name: &str| format_ident!("__mongolock_{}", name, span = Span::mixed_site());
    let (lock, guard, error, result, busy) = (
        hidden("lock"),
        hidden("guard"),
        hidden("error"),
        // At the return type, so that a "not `Send`" error points there.
        format_ident!(
            "__mongolock_output",
            span = ret_span.resolved_at(Span::mixed_site())
        ),
        hidden("busy_key"),
    );
    // Converted by inference from where it is returned: the return type is
    // never written out (it may hold `impl Trait`). Spanned on the return
    // type, where a type that cannot carry the error is reported.
    let from_lock_error = |error: &Ident| {
        let path = respan(quote!(#krate::__private::from_lock_error), ret_span);
        quote_spanned!(ret_span=> #path(#error))
    };
    let convert = from_lock_error(&error);
    let lock_source = match &args.lock {
        Some(expr) => quote!(#expr),
        None => quote! {
            match #krate::__private::global() {
                ::core::result::Result::Ok(#lock) => #lock,
                ::core::result::Result::Err(#error) => return #convert,
            }
        },
    };
    let duration = |what: &str, d: &Dur| match d {
        Dur::Literal(m) => {
            let millis = m.millis;
            quote!(::core::time::Duration::from_millis(#millis))
        }
        Dur::Expr(expr) => quote! {
            match #krate::__private::LockDuration::lock_duration(#expr, #what) {
                ::core::result::Result::Ok(d) => d,
                ::core::result::Result::Err(#error) => return #convert,
            }
        },
    };
    let option = |name: &str, d: &Option<Dur>| {
        d.as_ref().map(|d| {
            let method = Ident::new(name, Span::call_site());
            let value = duration(name, d);
            quote!(.#method(#value))
        })
    };
    let expires = option("expires", &args.expires);
    let timeout = option("timeout", &args.timeout);
    let min_hold = option("min_hold", &args.min_hold);
    let owner = args.owner.as_ref().map(|o| quote!(.owner(#o)));
    let fair = args.fair.as_ref().map(|f| quote!(.fair(#f)));
    let mut acquire = quote!(#lock.acquire(#key) #expires #timeout #min_hold #fair #owner);
    if let Some(permits) = &args.permits {
        let renew = match &args.renew {
            Some(Renew::On) => quote!(.renew(true)),
            Some(Renew::Off) => quote!(.renew(false)),
            Some(Renew::Expr(expr)) => quote!(.renew(#expr)),
            _ => quote!(),
        };
        let timeout = match &args.timeout {
            Some(d) => {
                let d = duration("timeout", d);
                quote!(::core::option::Option::Some(#d))
            }
            None => quote!(::core::option::Option::None),
        };
        acquire = quote!(#krate::__private::permit(
            #lock.semaphore(#key, #permits) #expires #renew,
            #timeout
        ));
    } else {
        match &args.renew {
            // Without a lease of the user's, the default one is kept alive for
            // as long as the body runs (Redisson's watchdog): a long body is
            // not cancelled for a lease the user never chose.
            None if args.expires.is_none() => acquire = quote!(#acquire.renew(true)),
            None | Some(Renew::Off) => {}
            Some(Renew::On) => acquire = quote!(#acquire.renew(true)),
            Some(Renew::Every(m)) => {
                let millis = m.millis;
                acquire =
                    quote!(#acquire.renew_every(::core::time::Duration::from_millis(#millis)));
            }
            Some(Renew::Expr(expr)) => {
                acquire = quote!(#krate::__private::RenewOption::apply(#expr, #acquire));
            }
        }
    }
    let skip = args.skip_when_busy.unwrap_or(false).then(|| {
        let skipped = respan(quote!(#krate::__private::skipped), ret_span);
        quote! {
            ::core::result::Result::Err(#krate::Error::Locked { key: #busy, .. }) => {
                return #skipped(&#busy);
            }
        }
    });
    let inner = match boxed_async_block(&func.block) {
        Some(boxed) => quote!(#boxed),
        None => {
            let block = &func.block;
            let fake_return = return_type_hint(&func.sig.output, &hidden("return_type"));
            quote! {
                async move {
                    #fake_return
                    #block
                }
            }
        }
    };
    // A lost lock (a renewal found another holder, or the lease ran out
    // locally) cancels the body at its next await point: the body never
    // runs past the lease it was given.
    let run = quote! {
        match #krate::__private::until_lost(&#guard, #inner).await {
            ::core::result::Result::Ok(#result) => #result,
            ::core::result::Result::Err(#error) => {
                #krate::__private::release(#guard).await;
                return #convert;
            }
        }
    };
    if let Some(schedule) = args.schedule.as_ref().filter(|_| args.permits.is_none()) {
        let expires = match &args.expires {
            Some(d) => {
                let d = duration("expires", d);
                quote!(::core::option::Option::Some(#d))
            }
            None => quote!(::core::option::Option::None),
        };
        let skipped = respan(quote!(#krate::__private::not_this_tick), ret_span);
        let body = quote! {
            let #guard = {
                let #lock: &#krate::MongoLock = #lock_source;
                match #krate::__private::claim_tick(#lock, #key, #schedule, #expires).await {
                    ::core::result::Result::Ok(::core::option::Option::Some(#guard)) => #guard,
                    ::core::result::Result::Ok(::core::option::Option::None) => {
                        return #skipped();
                    }
                    ::core::result::Result::Err(#error) => return #convert,
                }
            };
            let #result = match #krate::__private::until_lost(#guard.guard(), #inner).await {
                ::core::result::Result::Ok(#result) => #result,
                ::core::result::Result::Err(#error) => {
                    #guard.finish_lost().await;
                    return #convert;
                }
            };
            #guard.finish(&#result).await;
            #[allow(clippy::needless_return)]
            return #result;
        };
        return install(func, body);
    }
    let body = quote! {
            let #guard = {
                let #lock: &#krate::MongoLock = #lock_source;
                match #acquire.await {
                    ::core::result::Result::Ok(#guard) => #guard,
                    #skip
                    ::core::result::Result::Err(#error) => return #convert,
                }
            };
            let #result = #run;
            #krate::__private::release(#guard).await;
            // An explicit `return`: a tail expression here would be
            // attributed to the user by `clippy::implicit_return`, whose
            // fix would be `return #[mongo_locked(..)]`.
            #[allow(clippy::needless_return)]
            return #result;
    };
    install(func, body)
}

/// `func` with `body` as its body (inside the boxed future, for an
/// `#[async_trait]` method).
fn install(mut func: ItemFn, body: TokenStream) -> ItemFn {
    if boxed_async_block(&func.block).is_some() {
        // Keep `Box::pin(...)` as `#[async_trait]` wrote it; replace its
        // block with ours around it.
        if let [Stmt::Expr(Expr::Call(call), None)] = func.block.stmts.as_mut_slice() {
            if let Some(arg) = call.args.first_mut() {
                *arg = Expr::Verbatim(quote!(async move { #body }));
            }
        }
    } else {
        // Everything around the body (attributes, docs, visibility,
        // generics, where-clauses) is kept as written.
        func.block.stmts = vec![Stmt::Expr(Expr::Verbatim(body), None)];
    }
    func
}

/// `tokens` with every span set to `span`, so that an error about them is
/// reported there (the user's return type) rather than on the attribute.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let proc_macro2::TokenTree::Group(group) = &token {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = proc_macro2::TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// A never-taken `return` of the function's return type, spanned on it,
/// that tells type inference what the inner block returns. `impl Trait`
/// in it becomes `_`: it may not be written in a `let`.
fn return_type_hint(output: &ReturnType, result: &Ident) -> TokenStream {
    let mut ret = match output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    syn::visit_mut::VisitMut::visit_type_mut(&mut ImplTraitEraser, &mut ret);
    quote_spanned! {output.span()=>
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
    }
}

/// Replaces `impl Trait` with `_` (as `tracing-attributes` does).
struct ImplTraitEraser;

impl syn::visit_mut::VisitMut for ImplTraitEraser {
    fn visit_type_mut(&mut self, ty: &mut syn::Type) {
        if let syn::Type::ImplTrait(impl_trait) = ty {
            *ty = syn::Type::Infer(syn::TypeInfer {
                attrs: Vec::new(),
                underscore_token: syn::Token![_](impl_trait.impl_token.span),
            });
            return;
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }
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
                            return ::mongolock::__private::from_lock_error(__mongolock_error)
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
                            return ::mongolock::__private::from_lock_error(__mongolock_error)
                        }
                    }
                };
                let __mongolock_output = match ::mongolock::__private::until_lost(
                    &__mongolock_guard,
                    async move {
                        #[allow(
                            unknown_lints,
                            unreachable_code,
                            clippy::diverging_sub_expression,
                            clippy::empty_loop,
                            clippy::needless_return
                        )]
                        if false {
                            let __mongolock_return_type: Result<u64, AppError> = loop {};
                            return __mongolock_return_type;
                        }
                        {
                            Ok(user.id)
                        }
                    },
                )
                .await
                {
                    ::core::result::Result::Ok(__mongolock_output) => __mongolock_output,
                    ::core::result::Result::Err(__mongolock_error) => {
                        ::mongolock::__private::release(__mongolock_guard).await;
                        return ::mongolock::__private::from_lock_error(__mongolock_error);
                    }
                };
                ::mongolock::__private::release(__mongolock_guard).await;
                #[allow(clippy::needless_return)]
                return __mongolock_output;
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
    fn the_default_lease_is_renewed_and_a_chosen_one_is_not() {
        let item = quote! { async fn job() -> Result<(), E> { Ok(()) } };
        let renews = |attr: TokenStream| expand(attr, item.clone()).contains(".renew(true)");
        assert!(renews(quote!(key = "k")));
        assert!(renews(quote!(key = "k", expires = 5, renew = true)));
        assert!(!renews(quote!(key = "k", expires = 5)));
        assert!(!renews(quote!(key = "k", renew = false)));
        // Renewed or not, the body runs under `until_lost`.
        for attr in [quote!(key = "k"), quote!(key = "k", expires = 5)] {
            let actual = expand(attr, item.clone());
            assert!(actual.contains("__private::until_lost("), "{actual}");
        }
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

    #[test]
    fn stacked_locks_nest_in_reading_order() {
        let actual = expand(
            quote!(key = "outer"),
            quote! {
                #[mongo_locked(key = "inner")]
                async fn job() -> Result<(), E> { Ok(()) }
            },
        );
        let outer = actual.find("\"outer\"").expect("outer lock");
        let inner = actual.find("\"inner\"").expect("inner lock");
        assert!(outer < inner, "the top lock must be taken first: {actual}");
        assert!(!actual.contains("mongo_locked("), "expanded once: {actual}");
    }

    #[test]
    fn async_trait_method_is_locked_inside_its_boxed_future() {
        let actual = expand(
            quote!(key = "job:{id}"),
            quote! {
                fn run<'life0, 'async_trait>(&'life0 self, id: u32)
                    -> ::core::pin::Pin<Box<dyn ::core::future::Future<Output = Result<(), E>> + Send + 'async_trait>>
                where Self: 'async_trait
                {
                    Box::pin(async move {
                        let __self = self;
                        let id = id;
                        let __ret: Result<(), E> = { Ok(()) };
                        __ret
                    })
                }
            },
        );
        let boxed = actual.find("Box::pin(async move {").expect("still boxed");
        let acquire = actual.find(".acquire(").expect("acquires");
        let body = actual.find("let __self = self;").expect("body kept");
        assert!(boxed < acquire && acquire < body, "{actual}");
        assert!(!actual.contains("compile_error"), "{actual}");
    }

    #[test]
    fn below_a_runtime_attribute_the_error_names_the_order() {
        let actual = mongo_locked(
            quote!(key = "k"),
            quote! {
                fn main() -> Result<(), E> {
                    let body = async { Ok(()) };
                    tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(body)
                }
            },
        )
        .to_string();
        assert!(actual.contains("must come before (above)"), "{actual}");
    }

    #[test]
    fn impl_trait_in_the_return_type_is_never_written_out() {
        let actual = expand(
            quote!(key = "k"),
            quote! {
                async fn numbers() -> Result<impl Iterator<Item = u32>, E> { Ok(0..3) }
            },
        );
        assert_eq!(actual.matches("impl Iterator").count(), 1, "{actual}");
        assert!(actual.contains("Result<_, E>"), "{actual}");
    }

    #[test]
    fn reserved_names_in_template_fields_are_errors_not_panics() {
        for template in ["k:{x.super}", "k:{x.crate}", "k:{x._}", "k:{x.Self}"] {
            let actual = mongo_locked(
                quote!(key = #template),
                quote! { async fn job(x: X) -> Result<(), E> { Ok(()) } },
            )
            .to_string();
            assert_eq!(
                actual.matches("compile_error").count(),
                1,
                "{template}: {actual}"
            );
        }
        let raw = expand(
            quote!(key = "k:{x.type}"),
            quote! { async fn job(x: X) -> Result<(), E> { Ok(()) } },
        );
        assert!(raw.contains("x.r#type"), "{raw}");
    }
}
