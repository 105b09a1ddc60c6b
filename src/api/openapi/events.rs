//! The server-sent events of `GET /job/{id}/events` and of `POST /predict` with
//! `Accept: text/event-stream`, as the document describes them.
//!
//! In OpenAPI 3.1 the `schema` of a `text/event-stream` response describes one event: an
//! object with the event's fields (`event`, `id`, `data`, `retry`), each a string as it is on the
//! wire. `data` is JSON, so it is a string with `contentMediaType: application/json` and a
//! `contentSchema`: the body it holds (`JobResponse`, `PredictResponse`, `ErrorBody`), which a
//! client or a tester can check each event against. utoipa's derive has no `contentSchema`, so
//! these schemas are built by hand. Keep-alive comments are not events.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::super::types::{ErrorBody, JobResponse, PredictResponse};
use crate::jobs::JobStatus;

type Schemas = Vec<(String, RefOr<Schema>)>;

/// One event of `GET /job/{id}/events`: a state of the job.
pub struct JobEvent;

/// One event of `POST /predict` with `Accept: text/event-stream`: `fast` first, then the job's
/// states ([`JobEvent`]), or an `error` that ends the stream.
pub struct PredictEvent;

/// A `data` field holding `T` as JSON.
fn json_data<T: ToSchema>(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .content_media_type("application/json")
        .content_schema(Some(Ref::from_schema_name(T::name())))
}

/// An `event` field that is exactly `name`.
fn named(name: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some([name]))
}

/// Registers `T` and what it refers to.
fn register<T: ToSchema>(schemas: &mut Schemas) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

impl PartialSchema for JobEvent {
    fn schema() -> RefOr<Schema> {
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("`<status>-<attempts>`: what a reconnecting client sends as `Last-Event-ID`."))
            .pattern(Some(format!(
                "^({})-[0-9]+$",
                JobStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("|")
            )));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "A state of the job: the event name is its status, `data` the job as `GET /job/{id}` gives it.",
            ))
            .property("event", Ref::from_schema_name(JobStatus::name()))
            .required("event")
            .property("id", id)
            .required("id")
            .property("data", json_data::<JobResponse>("The job (`JobResponse`), JSON."))
            .required("data")
            .into()
    }
}

impl ToSchema for JobEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobEvent")
    }

    fn schemas(schemas: &mut Schemas) {
        register::<JobResponse>(schemas);
        register::<JobStatus>(schemas);
    }
}

impl PartialSchema for PredictEvent {
    fn schema() -> RefOr<Schema> {
        let fast = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The first event: the fast answer, the same JSON as without `Accept: text/event-stream`.",
            ))
            .property("event", named("fast"))
            .required("event")
            .property("data", json_data::<PredictResponse>("The fast answer (`PredictResponse`), JSON."))
            .required("data");
        let error = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("The job cannot be followed (past `--max-watchers`, the queue down): the last event."))
            .property("event", named("error"))
            .required("event")
            .property("data", json_data::<ErrorBody>("Why (`ErrorBody`), JSON."))
            .required("data");
        OneOfBuilder::new()
            .description(Some("`fast`, then the job's states as in `GET /job/{id}/events`, or an `error`."))
            .item(fast)
            .item(Ref::from_schema_name(JobEvent::name()))
            .item(error)
            .into()
    }
}

impl ToSchema for PredictEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PredictEvent")
    }

    fn schemas(schemas: &mut Schemas) {
        register::<PredictResponse>(schemas);
        register::<ErrorBody>(schemas);
        register::<JobEvent>(schemas);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    fn document() -> Value {
        serde_json::to_value(super::super::document()).expect("serializable")
    }

    #[test]
    fn event_streams_describe_each_event_and_the_json_in_its_data() {
        let doc = document();
        let stream = |path: &str, method: &str| {
            doc["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]["schema"]["$ref"].clone()
        };
        assert_eq!(stream("/job/{id}/events", "get"), "#/components/schemas/JobEvent");
        assert_eq!(stream("/predict", "post"), "#/components/schemas/PredictEvent");

        let schemas = &doc["components"]["schemas"];
        let job = &schemas["JobEvent"];
        assert_eq!(job["required"], json!(["event", "id", "data"]));
        assert_eq!(job["properties"]["event"]["$ref"], "#/components/schemas/JobStatus");
        let data = &job["properties"]["data"];
        assert_eq!(
            (data["type"].as_str(), data["contentMediaType"].as_str()),
            (Some("string"), Some("application/json"))
        );
        assert_eq!(data["contentSchema"]["$ref"], "#/components/schemas/JobResponse");
        let id = id_matcher(job["properties"]["id"]["pattern"].as_str().expect("a pattern"));
        assert!(id("completed-1") && id("queued-0") && !id("done-1") && !id("completed-"));

        let kinds = schemas["PredictEvent"]["oneOf"].as_array().expect("oneOf");
        assert_eq!(kinds.len(), 3);
        assert_eq!(kinds[0]["properties"]["event"]["enum"], json!(["fast"]));
        assert_eq!(kinds[0]["properties"]["data"]["contentSchema"]["$ref"], "#/components/schemas/PredictResponse");
        assert_eq!(kinds[1]["$ref"], "#/components/schemas/JobEvent");
        assert_eq!(kinds[2]["properties"]["event"]["enum"], json!(["error"]));
        assert_eq!(kinds[2]["properties"]["data"]["contentSchema"]["$ref"], "#/components/schemas/ErrorBody");
        for name in ["JobResponse", "PredictResponse", "ErrorBody", "JobStatus"] {
            assert!(schemas.get(name).is_some(), "{name} is not in the document");
        }
    }

    /// The id pattern is `^(a|b|...)-[0-9]+$`: checked here without a regex crate.
    fn id_matcher(pattern: &str) -> impl Fn(&str) -> bool {
        let names: Vec<String> = pattern
            .strip_prefix("^(")
            .and_then(|p| p.strip_suffix(")-[0-9]+$"))
            .expect("the pattern's shape")
            .split('|')
            .map(str::to_owned)
            .collect();
        move |id: &str| {
            id.rsplit_once('-').is_some_and(|(status, attempts)| {
                names.iter().any(|n| n == status)
                    && !attempts.is_empty()
                    && attempts.bytes().all(|b| b.is_ascii_digit())
            })
        }
    }
}
