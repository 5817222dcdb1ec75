//! `other-version`: a plugin built for a future major version of the
//! contract. The gateway must refuse to load it, naming both versions.

wit_bindgen::generate!({
    inline: "
        package gatehouse:plugin@1.0.0;
        interface handler {
            handle: func(path: string) -> string;
        }
        world route-handler {
            export handler;
        }
    ",
});

struct OtherVersion;

impl exports::gatehouse::plugin::handler::Guest for OtherVersion {
    fn handle(path: String) -> String {
        path
    }
}

export!(OtherVersion);
