//! The request stages, one file each, in the order `Gateway::handle` calls them.

pub mod admit;
pub mod authenticate;
pub mod component;
pub mod identity;
pub mod log;
pub mod request_id;
pub mod response;
pub mod route;
pub mod trace;
pub mod upstream;
pub mod websocket;
