//! Typed identifiers. The shell creates them (UUIDv7 for time-ordered ids); the core only
//! carries them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A task; UUIDv7, so ids sort by creation time.
    TaskId
);
id_type!(
    /// A registered agent instance.
    AgentId
);
id_type!(
    /// A tenant, the unit of isolation.
    TenantId
);

impl TenantId {
    /// The tenant that owns everything until the security issue adds tenant management.
    pub const DEFAULT: TenantId =
        TenantId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001));
}
