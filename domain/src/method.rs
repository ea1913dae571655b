//! What each gRPC method needs before it is served (SPEC C2): one table, keyed by the method path.
//! The transport asks [`MethodTable::access`] for every request, before it reads anything else.

use std::collections::BTreeSet;
use std::fmt;

/// The RPCs of GitLab's `DuoWorkflow` service (SPEC C1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    ExecuteWorkflow,
    GenerateToken,
    ListCapabilities,
    ListTools,
    ListFlows,
    TrackSelfHostedExecuteWorkflow,
    ValidateFlowConfig,
}

impl Rpc {
    pub const SERVICE: &'static str = "DuoWorkflow";

    pub const ALL: [Rpc; 7] = [
        Rpc::ExecuteWorkflow,
        Rpc::GenerateToken,
        Rpc::ListCapabilities,
        Rpc::ListTools,
        Rpc::ListFlows,
        Rpc::TrackSelfHostedExecuteWorkflow,
        Rpc::ValidateFlowConfig,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::ExecuteWorkflow => "ExecuteWorkflow",
            Rpc::GenerateToken => "GenerateToken",
            Rpc::ListCapabilities => "ListCapabilities",
            Rpc::ListTools => "ListTools",
            Rpc::ListFlows => "ListFlows",
            Rpc::TrackSelfHostedExecuteWorkflow => "TrackSelfHostedExecuteWorkflow",
            Rpc::ValidateFlowConfig => "ValidateFlowConfig",
        }
    }

    /// The RPC named by a gRPC method path (`/DuoWorkflow/<Rpc>`), if it is one of ours.
    pub fn from_path(path: &str) -> Option<Self> {
        let name = path.strip_prefix("/DuoWorkflow/")?;
        Rpc::ALL.into_iter().find(|rpc| rpc.name() == name)
    }

    /// Whether its authorization depends on the first request message: the flow of
    /// `ExecuteWorkflow` (its start request) and of `GenerateToken` (its `workflowDefinition`).
    pub fn reads_first_message(self) -> bool {
        matches!(self, Rpc::ExecuteWorkflow | Rpc::GenerateToken)
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the table says about a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Served to anyone, without a token: gRPC health, and reflection when enabled.
    Open,
    /// One of ours: authenticated, then authorized per [`crate::policy::authorize`].
    Rpc(Rpc),
    /// A method the operator allowed beyond the contract: any authenticated caller, relayed.
    Allowed,
    /// Not served: `UNIMPLEMENTED`, before any authentication.
    Refused,
}

const HEALTH: &str = "/grpc.health.v1.Health/";
const REFLECTION: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Why an operator's extra method was refused at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMethod(pub String);

impl fmt::Display for InvalidMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The table of SPEC C2, with the operator's two switches: reflection, and extra methods.
#[derive(Debug, Clone, Default)]
pub struct MethodTable {
    reflection: bool,
    allowed: BTreeSet<String>,
}

impl MethodTable {
    pub fn new(reflection: bool) -> Self {
        Self {
            reflection,
            allowed: BTreeSet::new(),
        }
    }

    /// Allows a method beyond the contract (a full path, `/package.Service/Method`) for any
    /// authenticated caller. Paths the table already decides cannot be re-decided here.
    pub fn allow(mut self, path: &str) -> Result<Self, InvalidMethod> {
        let well_formed = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(service, method)| {
                let name = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
                };
                name(service) && name(method) && !method.contains('.')
            });
        if !well_formed {
            return Err(InvalidMethod(format!(
                "{path:?} is not a gRPC method path (/package.Service/Method)"
            )));
        }
        if Rpc::from_path(path).is_some() || self.fixed(path).is_some() {
            return Err(InvalidMethod(format!(
                "{path:?} already has a fixed rule and cannot be allowed separately"
            )));
        }
        self.allowed.insert(path.to_owned());
        Ok(self)
    }

    pub fn reflection_enabled(&self) -> bool {
        self.reflection
    }

    /// Health and reflection, decided whatever the operator allows.
    fn fixed(&self, path: &str) -> Option<Access> {
        if path.starts_with(HEALTH) {
            return Some(Access::Open);
        }
        if REFLECTION.iter().any(|p| path.starts_with(p)) {
            return Some(if self.reflection {
                Access::Open
            } else {
                Access::Refused
            });
        }
        None
    }

    pub fn access(&self, path: &str) -> Access {
        if let Some(rpc) = Rpc::from_path(path) {
            return Access::Rpc(rpc);
        }
        if let Some(access) = self.fixed(path) {
            return access;
        }
        if self.allowed.contains(path) {
            Access::Allowed
        } else {
            Access::Refused
        }
    }
}

/// The flow a call runs (SPEC C2), e.g. `software_development`, `chat`, `developer/v1`. Empty
/// when a start request carries an inline `flowConfig` and no `workflowDefinition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow(String);

/// The flow that GitLab's chat runs, which needs the `duo_chat` unit primitive.
pub const CHAT_FLOW: &str = "chat";
/// The flow of a start request that names none.
pub const DEFAULT_FLOW: &str = "software_development";

impl Flow {
    /// A flow name as a client gave it, with GitLab's renames of retired experimental flows.
    pub fn named(name: &str) -> Self {
        let name = match name {
            "duo_planner/experimental" => "duo_planner/v1",
            "security_analyst_agent/experimental" => "security_analyst_agent/v1",
            other => other,
        };
        Flow(name.to_owned())
    }

    /// The flow of `GenerateToken`: its request's `workflowDefinition`, as given.
    pub fn of_token_request(workflow_definition: Option<&str>) -> Self {
        Flow::named(workflow_definition.unwrap_or(""))
    }

    /// The flow of an `ExecuteWorkflow` start request, or GitLab's refusal of its flow fields.
    pub fn of_start_request(start: &FlowFields) -> Result<Self, FlowError> {
        fn non_empty(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| !s.is_empty())
        }
        if let Some(id) = non_empty(&start.flow_config_id) {
            if start.has_flow_config {
                return Err(FlowError::ConfigIdAndConfig);
            }
            let schema = non_empty(&start.flow_config_schema_version)
                .ok_or(FlowError::ConfigIdWithoutSchemaVersion)?;
            if non_empty(&start.flow_version).is_none() {
                return Err(FlowError::ConfigIdWithoutVersion);
            }
            return Ok(Flow::named(&format!("{id}/{schema}")));
        }
        if start.has_flow_config {
            return Ok(Flow::named(&start.workflow_definition));
        }
        if non_empty(&start.flow_version).is_some() {
            return Err(FlowError::VersionWithoutConfigId);
        }
        Ok(Flow::named(if start.workflow_definition.is_empty() {
            DEFAULT_FLOW
        } else {
            &start.workflow_definition
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_chat(&self) -> bool {
        self.0 == CHAT_FLOW
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fields of a `StartWorkflowRequest` that select its flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFields {
    pub workflow_definition: String,
    /// Whether `flowConfig` (an inline flow configuration) is present.
    pub has_flow_config: bool,
    pub flow_config_schema_version: Option<String>,
    pub flow_config_id: Option<String>,
    pub flow_version: Option<String>,
}

/// Contradictory flow fields, with GitLab's messages (`INVALID_ARGUMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowError {
    ConfigIdAndConfig,
    ConfigIdWithoutSchemaVersion,
    ConfigIdWithoutVersion,
    VersionWithoutConfigId,
}

impl FlowError {
    pub fn message(self) -> &'static str {
        match self {
            FlowError::ConfigIdAndConfig => {
                "flowConfigId and flowConfig are mutually exclusive — set one or the other, not both."
            }
            FlowError::ConfigIdWithoutSchemaVersion => {
                "flowConfigId requires flowConfigSchemaVersion to also be provided."
            }
            FlowError::ConfigIdWithoutVersion => {
                "flowConfigId requires flowVersion to also be provided."
            }
            FlowError::VersionWithoutConfigId => {
                "flowVersion requires flowConfigId to also be provided."
            }
        }
    }
}

/// A call as authorization sees it: the method, and what its first message said when the rule
/// depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    GenerateToken(Flow),
    ExecuteWorkflow(Flow),
    TrackSelfHostedExecuteWorkflow,
    /// `ListCapabilities`, `ListTools`, `ListFlows`, `ValidateFlowConfig`, an operator-allowed
    /// method, or an `ExecuteWorkflow` stream closed before its first message: any
    /// authenticated caller.
    Authenticated,
}

impl Call {
    /// The call of an RPC whose rule does not read the first message.
    pub fn without_message(rpc: Rpc) -> Self {
        match rpc {
            Rpc::TrackSelfHostedExecuteWorkflow => Call::TrackSelfHostedExecuteWorkflow,
            Rpc::GenerateToken => Call::GenerateToken(Flow::of_token_request(None)),
            _ => Call::Authenticated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(f: impl FnOnce(&mut FlowFields)) -> FlowFields {
        let mut v = FlowFields::default();
        f(&mut v);
        v
    }

    fn some(s: &str) -> Option<String> {
        Some(s.into())
    }

    #[test]
    fn every_rpc_has_its_path() {
        for rpc in Rpc::ALL {
            assert_eq!(Rpc::from_path(&format!("/DuoWorkflow/{rpc}")), Some(rpc));
        }
        assert_eq!(Rpc::from_path("/DuoWorkflow/Nope"), None);
        assert_eq!(Rpc::from_path("/Other/GenerateToken"), None);
        assert_eq!(Rpc::from_path("/DuoWorkflow/GenerateToken/x"), None);
    }

    #[test]
    fn the_table_of_spec_c2() {
        let t = MethodTable::new(false);
        assert_eq!(
            t.access("/DuoWorkflow/ListTools"),
            Access::Rpc(Rpc::ListTools)
        );
        assert_eq!(t.access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(t.access("/grpc.health.v1.Health/Watch"), Access::Open);
        assert_eq!(
            t.access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::Refused
        );
        assert_eq!(t.access("/DuoWorkflow/Unknown"), Access::Refused);
        assert_eq!(t.access("/other.Service/Method"), Access::Refused);
        assert_eq!(t.access(""), Access::Refused);
        let t = MethodTable::new(true);
        for p in REFLECTION {
            assert_eq!(t.access(&format!("{p}ServerReflectionInfo")), Access::Open);
        }
    }

    #[test]
    fn the_operator_may_allow_methods_beyond_the_contract_but_not_redecide_ours() {
        let t = MethodTable::new(false)
            .allow("/DuoWorkflow/NewRpc")
            .unwrap()
            .allow("/gitlab.other.v1.Svc/Do_It")
            .unwrap();
        assert_eq!(t.access("/DuoWorkflow/NewRpc"), Access::Allowed);
        assert_eq!(t.access("/gitlab.other.v1.Svc/Do_It"), Access::Allowed);
        assert_eq!(t.access("/DuoWorkflow/NewRpc2"), Access::Refused);
        for bad in [
            "DuoWorkflow/NewRpc",
            "/DuoWorkflow",
            "/DuoWorkflow/",
            "//X",
            "/a/b/c",
            "/a/b c",
            "/a/b.c",
            "/DuoWorkflow/GenerateToken",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(MethodTable::new(false).allow(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_generate_token_and_execute_workflow_read_their_first_message() {
        let readers: Vec<Rpc> = Rpc::ALL
            .into_iter()
            .filter(|r| r.reads_first_message())
            .collect();
        assert_eq!(readers, [Rpc::ExecuteWorkflow, Rpc::GenerateToken]);
    }

    #[test]
    fn a_flow_config_id_needs_its_schema_version_and_version_and_no_inline_config() {
        let ok = fields(|f| {
            f.flow_config_id = some("developer");
            f.flow_config_schema_version = some("v1");
            f.flow_version = some("1.0.0");
            f.workflow_definition = "ignored".into();
        });
        assert_eq!(
            Flow::of_start_request(&ok).unwrap().as_str(),
            "developer/v1"
        );
        let mut both = ok.clone();
        both.has_flow_config = true;
        assert_eq!(
            Flow::of_start_request(&both),
            Err(FlowError::ConfigIdAndConfig)
        );
        for empty in [None, some("")] {
            let mut f = ok.clone();
            f.flow_config_schema_version = empty.clone();
            assert_eq!(
                Flow::of_start_request(&f),
                Err(FlowError::ConfigIdWithoutSchemaVersion)
            );
            let mut f = ok.clone();
            f.flow_version = empty;
            assert_eq!(
                Flow::of_start_request(&f),
                Err(FlowError::ConfigIdWithoutVersion)
            );
        }
    }

    #[test]
    fn an_empty_flow_config_id_counts_as_absent() {
        let f = fields(|f| {
            f.flow_config_id = some("");
            f.workflow_definition = "chat".into();
        });
        assert_eq!(Flow::of_start_request(&f).unwrap().as_str(), "chat");
    }

    #[test]
    fn an_inline_flow_config_runs_the_workflow_definition_even_empty() {
        let f = fields(|f| {
            f.has_flow_config = true;
            f.flow_version = some("1.0.0");
        });
        assert_eq!(Flow::of_start_request(&f).unwrap().as_str(), "");
        let f = fields(|f| {
            f.has_flow_config = true;
            f.workflow_definition = "my_flow".into();
        });
        assert_eq!(Flow::of_start_request(&f).unwrap().as_str(), "my_flow");
    }

    #[test]
    fn a_flow_version_alone_is_refused() {
        let f = fields(|f| f.flow_version = some("1.0.0"));
        assert_eq!(
            Flow::of_start_request(&f),
            Err(FlowError::VersionWithoutConfigId)
        );
        let f = fields(|f| f.flow_version = some(""));
        assert_eq!(
            Flow::of_start_request(&f).unwrap().as_str(),
            "software_development"
        );
    }

    #[test]
    fn the_legacy_definition_or_the_default_flow() {
        let f = fields(|f| f.workflow_definition = "chat".into());
        assert!(Flow::of_start_request(&f).unwrap().is_chat());
        assert_eq!(
            Flow::of_start_request(&FlowFields::default())
                .unwrap()
                .as_str(),
            DEFAULT_FLOW
        );
    }

    #[test]
    fn retired_experimental_flows_read_as_v1() {
        for (given, read) in [
            ("duo_planner/experimental", "duo_planner/v1"),
            (
                "security_analyst_agent/experimental",
                "security_analyst_agent/v1",
            ),
            ("other/experimental", "other/experimental"),
        ] {
            let f = fields(|f| f.workflow_definition = given.into());
            assert_eq!(Flow::of_start_request(&f).unwrap().as_str(), read);
            assert_eq!(Flow::of_token_request(Some(given)).as_str(), read);
        }
        let f = fields(|f| {
            f.flow_config_id = some("duo_planner");
            f.flow_config_schema_version = some("experimental");
            f.flow_version = some("1");
        });
        assert_eq!(
            Flow::of_start_request(&f).unwrap().as_str(),
            "duo_planner/v1"
        );
    }

    #[test]
    fn the_flow_of_generate_token_is_its_workflow_definition() {
        assert_eq!(Flow::of_token_request(None).as_str(), "");
        assert!(Flow::of_token_request(Some("chat")).is_chat());
        assert!(!Flow::of_token_request(Some("Chat")).is_chat());
    }
}
