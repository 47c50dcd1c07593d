use super::*;
use base64::Engine as _;

fn wiring() -> WiringArgs {
    crate::inject::tests::opts()
}

/// A Pod as a ReplicaSet creates it: generateName, no name, its namespace
/// only in the request.
fn pod(annotations: Json, grace: i64) -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-7d9f-", "annotations": annotations},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "nginx",
                "image": "nginxinc/nginx-unprivileged:1.27",
                "ports": [{"containerPort": 8080}],
                "securityContext": {"runAsUser": 101},
            }],
        },
    })
}

fn request(object: Json) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": object,
        },
    })
    .to_string()
    .into_bytes()
}

fn answer(body: &[u8], path: Path) -> Json {
    let (a, _) = review(body, path, &wiring()).unwrap();
    assert_eq!(a["kind"], "AdmissionReview");
    assert_eq!(a["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(a["response"]["allowed"], true, "never refuses a pod");
    a["response"].clone()
}

/// The patch applied to `object`, as the API server would.
fn patched(mut object: Json, response: &Json) -> Json {
    let text = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Json> = serde_json::from_slice(&text).unwrap();
    for op in ops {
        let path = op["path"].as_str().unwrap();
        match (op["op"].as_str().unwrap(), path) {
            ("replace", "/spec") => object["spec"] = op["value"].clone(),
            ("add", "/metadata/annotations") => {
                object["metadata"]["annotations"] = op["value"].clone();
            }
            ("add", p) => {
                let key = p
                    .strip_prefix("/metadata/annotations/")
                    .unwrap()
                    .replace("~1", "/");
                object["metadata"]["annotations"][key] = op["value"].clone();
            }
            other => panic!("unexpected op {other:?}"),
        }
    }
    object
}

#[test]
fn a_pod_in_a_labelled_namespace_is_wired_as_inject_wires_it() {
    let object = pod(json!({}), 30);
    let r = answer(&request(object.clone()), Path::Namespace);
    assert_eq!(r["patchType"], "JSONPatch");
    let wired = patched(object, &r);
    let spec = &wired["spec"];
    assert_eq!(spec["shareProcessNamespace"], true);
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["name"], "nginx-drain");
    assert_eq!(sidecar["image"], "nginx-drain:test");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(
        spec["containers"][0]["lifecycle"]["preStop"]["httpGet"]["path"],
        "/prestop"
    );
    assert_eq!(
        wired["metadata"]["annotations"][INJECTED],
        env!("CARGO_PKG_VERSION")
    );
    // The same as inject makes of the same pod.
    let mut yaml: serde_norway::Value = serde_norway::to_value(pod(json!({}), 30)).unwrap();
    yaml["metadata"]["namespace"] = "shop".into();
    inject::wire_pod_object(&mut yaml, &wiring(), &mut Vec::new()).unwrap();
    assert_eq!(serde_json::to_value(&yaml["spec"]).unwrap(), *spec);
}

#[test]
fn a_pod_without_annotations_gets_the_annotation_map() {
    let mut object = pod(json!({}), 30);
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let r = answer(&request(object.clone()), Path::Namespace);
    let wired = patched(object, &r);
    assert_eq!(
        wired["metadata"]["annotations"][INJECTED],
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn opt_in_and_opt_out() {
    // Elsewhere, only the annotation opts in.
    let r = answer(&request(pod(json!({}), 30)), Path::Annotated);
    assert!(r["patch"].is_null() && r["warnings"].is_null(), "{r}");
    let r = answer(
        &request(pod(json!({OPT_IN: "enabled"}), 30)),
        Path::Annotated,
    );
    assert_eq!(r["patchType"], "JSONPatch");
    // In a labelled namespace, the annotation opts out.
    let r = answer(
        &request(pod(json!({OPT_IN: "disabled"}), 30)),
        Path::Namespace,
    );
    assert!(r["patch"].is_null() && r["warnings"].is_null(), "{r}");
}

#[test]
fn a_wired_pod_is_left_as_it_is() {
    let object = pod(json!({}), 30);
    let r = answer(&request(object.clone()), Path::Namespace);
    let wired = patched(object, &r);
    let r = answer(&request(wired), Path::Namespace);
    assert!(r["patch"].is_null(), "{r}");
    assert!(r["warnings"].is_null(), "{r}");
}

#[test]
fn a_pod_it_cannot_wire_is_admitted_unchanged_with_a_warning_that_says_why() {
    let object = pod(json!({}), 4);
    let r = answer(&request(object.clone()), Path::Namespace);
    let admitted = patched(object.clone(), &r);
    assert_eq!(admitted["spec"], object["spec"], "its spec unchanged");
    let note = admitted["metadata"]["annotations"][NOT_WIRED]
        .as_str()
        .unwrap();
    assert!(note.contains("--grace-period"), "{note}");
    assert!(note.len() <= WARNING_LIMIT, "{}", note.len());
    let w = r["warnings"][0].as_str().unwrap();
    assert!(w.starts_with("nginx-drain: not wired:"), "{w}");
    assert!(w.contains("--grace-period"), "{w}");
    assert!(w.contains("Pod shop/web-7d9f-*"), "{w}");
    assert!(w.len() <= WARNING_LIMIT, "{}", w.len());
    // Asked for by annotation, but no NGINX in it: said too.
    let mut object = pod(json!({OPT_IN: "enabled"}), 30);
    object["spec"]["containers"][0]["image"] = json!("redis:7");
    let r = answer(&request(object.clone()), Path::Annotated);
    let admitted = patched(object.clone(), &r);
    assert_eq!(admitted["spec"], object["spec"], "its spec unchanged");
    assert!(
        r["warnings"][0].as_str().unwrap().contains("not wired"),
        "{r}"
    );
    // In a labelled namespace, a pod without NGINX: no warning (most pods
    // there are not NGINX), and the annotation says why.
    object["metadata"]["annotations"] = json!({});
    let r = answer(&request(object.clone()), Path::Namespace);
    assert!(r["warnings"].is_null(), "{r}");
    let admitted = patched(object, &r);
    let note = admitted["metadata"]["annotations"][NOT_WIRED]
        .as_str()
        .unwrap();
    assert!(note.contains("no NGINX container"), "{note}");
}

#[test]
fn what_is_no_pod_create_is_left_alone() {
    let mut body: Json = serde_json::from_slice(&request(pod(json!({}), 30))).unwrap();
    body["request"]["operation"] = json!("UPDATE");
    let r = answer(body.to_string().as_bytes(), Path::Namespace);
    assert!(r["patch"].is_null(), "{r}");
    body["request"]["operation"] = json!("CREATE");
    body["request"]["kind"]["kind"] = json!("Deployment");
    let r = answer(body.to_string().as_bytes(), Path::Namespace);
    assert!(r["patch"].is_null(), "{r}");
}

#[test]
fn what_is_no_admission_review_is_refused_with_what_was_expected() {
    let e = review(b"not json", Path::Namespace, &wiring()).unwrap_err();
    assert!(e.contains("AdmissionReview"), "{e}");
    let e = review(b"{\"request\":{}}", Path::Namespace, &wiring()).unwrap_err();
    assert!(e.contains("uid"), "{e}");
}

#[test]
fn warnings_are_cut_to_what_the_api_server_keeps() {
    let w = warning(&"é".repeat(400));
    assert!(w.len() <= WARNING_LIMIT);
    assert!(w.ends_with("..."));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// JSON of any shape at the places a review is read from.
    fn any_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            "[a-zA-Z0-9:/._-]{0,12}".prop_map(Json::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("name".to_string()),
                        Just("image".to_string()),
                        Just("containers".to_string()),
                        Just("ports".to_string()),
                        Just("securityContext".to_string()),
                        Just("runAsUser".to_string()),
                        Just("annotations".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Bytes that are no review are refused with a reason, never a panic.
        #[test]
        fn any_bytes_are_answered_or_refused(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = review(&body, Path::Namespace, &wiring());
        }

        /// Any object in a Pod CREATE is admitted (never refused), and a
        /// patch, when there is one, decodes to JSON Patch operations.
        #[test]
        fn any_pod_is_admitted(spec in any_json(), meta in any_json(), path in prop_oneof![Just(Path::Namespace), Just(Path::Annotated)]) {
            let object = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec});
            let (a, _) = review(&request(object), path, &wiring()).unwrap();
            prop_assert_eq!(&a["response"]["allowed"], &json!(true));
            if let Some(p) = a["response"]["patch"].as_str() {
                let text = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
                let ops: Vec<Json> = serde_json::from_slice(&text).unwrap();
                prop_assert!(!ops.is_empty());
            }
        }
    }

    /// A real pod spec, mutated at random, still admitted.
    #[test]
    fn a_real_pod_with_odd_fields_is_admitted() {
        let mut object = pod(json!({}), 30);
        object["spec"]["containers"][0]["ports"] = json!("eighty");
        object["spec"]["initContainers"] = json!({"not": "a list"});
        let r = answer(&request(object), Path::Namespace);
        assert_eq!(r["allowed"], true);
    }
}
