//! Request paths of the Kubernetes REST API.

/// A path naming a resource collection or object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Version,
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    Resources {
        group: String,
        version: String,
    },
    Resource(Target),
    /// `/openapi/v3`
    OpenApiRoot,
    /// `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`
    OpenApi {
        group: String,
        version: String,
    },
    NotFound,
}

pub fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["api", v] => Route::Resources {
            group: String::new(),
            version: v.to_string(),
        },
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group(g.to_string()),
        ["apis", g, v] => Route::Resources {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["openapi", "v3"] => Route::OpenApiRoot,
        ["openapi", "v3", "api", v] => Route::OpenApi {
            group: String::new(),
            version: v.to_string(),
        },
        ["openapi", "v3", "apis", g, v] => Route::OpenApi {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["api", v, rest @ ..] => resource("", v, rest),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let target =
        |namespace: Option<&str>, resource: &str, name: Option<&str>, sub: Option<&str>| {
            Route::Resource(Target {
                group: group.to_string(),
                version: version.to_string(),
                namespace: namespace.map(str::to_string),
                resource: resource.to_string(),
                name: name.map(str::to_string),
                subresource: sub.map(str::to_string),
            })
        };
    match rest {
        // The namespace object itself and its subresources.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            target(None, "namespaces", Some(name), Some(sub))
        }
        ["namespaces", ns, res] => target(Some(ns), res, None, None),
        ["namespaces", ns, res, name] => target(Some(ns), res, Some(name), None),
        ["namespaces", ns, res, name, sub] => target(Some(ns), res, Some(name), Some(sub)),
        [res] => target(None, res, None, None),
        [res, name] => target(None, res, Some(name), None),
        [res, name, sub] => target(None, res, Some(name), Some(sub)),
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let Route::Resource(t) = route("/api/v1/namespaces/ns/pods/p/status") else {
            panic!()
        };
        assert_eq!(
            (
                t.group.as_str(),
                t.namespace.as_deref(),
                t.resource.as_str(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("", Some("ns"), "pods", Some("p"), Some("status"))
        );
        let Route::Resource(t) = route("/api/v1/namespaces/ns") else {
            panic!()
        };
        assert_eq!(
            (t.namespace, t.resource.as_str(), t.name.as_deref()),
            (None, "namespaces", Some("ns"))
        );
        let Route::Resource(t) = route("/apis/capstan.dev/v1alpha1/postgresclusters") else {
            panic!()
        };
        assert_eq!(
            (t.group.as_str(), t.version.as_str(), t.namespace),
            ("capstan.dev", "v1alpha1", None)
        );
        assert_eq!(route("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(route("/api"), Route::CoreVersions);
    }
}
