//! Roles and the permission table of SPEC 2.

use serde::{Deserialize, Serialize};

/// A user's role; each grants a fixed set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    DataManager,
    Analyst,
    Viewer,
}

/// One thing a user may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "patients.read")]
    PatientsRead,
    #[serde(rename = "patients.write")]
    PatientsWrite,
    #[serde(rename = "bulk.read")]
    BulkRead,
    #[serde(rename = "bulk.import")]
    BulkImport,
    #[serde(rename = "bulk.export")]
    BulkExport,
    #[serde(rename = "bulk.update")]
    BulkUpdate,
    #[serde(rename = "bulk.delete")]
    BulkDelete,
    #[serde(rename = "bulk.rollback")]
    BulkRollback,
    #[serde(rename = "bulk.cancel")]
    BulkCancel,
    #[serde(rename = "audit.read")]
    AuditRead,
    #[serde(rename = "org.admin")]
    OrgAdmin,
}

impl Permission {
    /// The permission needed to schedule an operation of this type.
    pub fn to_schedule(op_type: super::operation::OperationType) -> Permission {
        use super::operation::OperationType;
        match op_type {
            OperationType::Import => Permission::BulkImport,
            OperationType::Export => Permission::BulkExport,
            OperationType::Update => Permission::BulkUpdate,
            OperationType::Delete => Permission::BulkDelete,
            OperationType::Rollback => Permission::BulkRollback,
        }
    }

    pub const ALL: [Permission; 11] = [
        Permission::PatientsRead,
        Permission::PatientsWrite,
        Permission::BulkRead,
        Permission::BulkImport,
        Permission::BulkExport,
        Permission::BulkUpdate,
        Permission::BulkDelete,
        Permission::BulkRollback,
        Permission::BulkCancel,
        Permission::AuditRead,
        Permission::OrgAdmin,
    ];

    /// The name used in the API and the audit log (`patients.read`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::PatientsRead => "patients.read",
            Permission::PatientsWrite => "patients.write",
            Permission::BulkRead => "bulk.read",
            Permission::BulkImport => "bulk.import",
            Permission::BulkExport => "bulk.export",
            Permission::BulkUpdate => "bulk.update",
            Permission::BulkDelete => "bulk.delete",
            Permission::BulkRollback => "bulk.rollback",
            Permission::BulkCancel => "bulk.cancel",
            Permission::AuditRead => "audit.read",
            Permission::OrgAdmin => "org.admin",
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::DataManager => "data_manager",
            Role::Analyst => "analyst",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "data_manager" => Some(Role::DataManager),
            "analyst" => Some(Role::Analyst),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// The permission table of SPEC 2, row by row.
    pub fn has(self, permission: Permission) -> bool {
        use Permission::*;
        use Role::*;
        match permission {
            PatientsRead | BulkRead => true,
            PatientsWrite | BulkImport | BulkUpdate | BulkRollback | BulkCancel => {
                matches!(self, Admin | DataManager)
            }
            BulkExport => matches!(self, Admin | DataManager | Analyst),
            BulkDelete | AuditRead | OrgAdmin => self == Admin,
        }
    }

    /// Every permission of this role, in table order.
    pub fn permissions(self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.has(*p))
            .collect()
    }
}
