//! What each column of an interaction log is read as (an id, the weight, the datetime), and the
//! Arrow types accepted for it.

use arrow_schema::DataType;

/// What a column is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Id,
    Weight,
    Datetime,
}

impl Role {
    pub(super) fn accepts(self, data_type: &DataType) -> bool {
        let text = matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        let number =
            data_type.is_integer() || matches!(data_type, DataType::Float32 | DataType::Float64);
        match (self, data_type) {
            (Role::Id | Role::Datetime, DataType::Dictionary(_, values)) => self.accepts(values),
            (Role::Id, _) => text || data_type.is_integer(),
            (Role::Weight, _) => number,
            (Role::Datetime, _) => {
                text || number
                    || matches!(
                        data_type,
                        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
                    )
            }
        }
    }

    pub(super) fn expected_types(self) -> &'static str {
        match self {
            Role::Id => "text (Utf8, LargeUtf8, Utf8View), an integer type, or a dictionary of those",
            Role::Weight => "an integer type, Float32 or Float64",
            Role::Datetime => {
                "an integer or float type (unix seconds), Timestamp, Date32, Date64, or ISO-8601 text"
            }
        }
    }
}
