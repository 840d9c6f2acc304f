//! The `#[mongo_locked]` attribute. Use it through the `mongolock` crate,
//! which re-exports it and documents it: `mongolock::mongo_locked`.

mod args;
mod duration;
mod expand;
mod krate;
mod template;

/// Runs an `async fn` under a MongoDB lock. See `mongolock::mongo_locked`
/// for the documentation.
#[proc_macro_attribute]
pub fn mongo_locked(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand::mongo_locked(attr.into(), item.into()).into()
}
