//! What each OpenIM file may hold: its fields, under OpenIM's own
//! (camelCase) names, and the kind of value each takes.
//!
//! One table per file drives three things: refusing fields the file cannot
//! have, checking the type of every value (from the file or from an
//! `IMENV_` variable alike), and naming the `IMENV_` variable of each field.
//!
//! The tables follow the v3.8-era files of open-im-server. Where versions
//! differ only by optional fields (Redis' old `clusterMode`, share.yml's
//! `imAdminUserID` next to the newer `imAdminUser`, log.yml's rotation
//! settings, the webhook list), every variant is accepted.

/// The kind of value a field takes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// Text. A number or a boolean is taken as its text (a password made of
    /// digits must not be refused).
    Str,
    /// `true` or `false`.
    Bool,
    /// A whole number.
    Int,
    /// Any number.
    Float,
    /// A duration written as text: `"200ms"`, `"5s"`, `"1h30m"`.
    Duration,
    /// A list of texts.
    StrList,
    /// A list of whole numbers.
    IntList,
    /// A list of message content types: whole numbers or `"low-high"` ranges.
    TypeList,
    /// Anything: OpenIM options this service does not use and whose shape
    /// varies (Mongo tag sets, write concerns).
    Any,
    /// A nested section with its own fields.
    Section(&'static [Field]),
}

/// One field of a file or section.
#[derive(Debug)]
pub(crate) struct Field {
    /// The name in the YAML file.
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
}

/// One configuration file.
#[derive(Debug)]
pub(crate) struct FileSchema {
    /// File name in the configuration folder.
    pub name: &'static str,
    /// Its top-level fields.
    pub fields: &'static [Field],
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

use Kind::*;

// ---------------------------------------------------------------- openim-msgtransfer.yml

const PROMETHEUS: &[Field] = &[
    f("enable", Bool),
    f("autoSetPorts", Bool),
    f("ports", IntList),
];

const RATE_LIMITER: &[Field] = &[
    f("enable", Bool),
    f("window", Duration),
    f("bucket", Int),
    f("cpuThreshold", Int),
];

const CIRCUIT_BREAKER: &[Field] = &[
    f("enable", Bool),
    f("window", Duration),
    f("bucket", Int),
    f("success", Float),
    f("request", Int),
];

/// Our own section. OpenIM's Go service ignores keys it does not know, so
/// the file stays usable by both.
pub(crate) const RUST_TRANSFER: &[Field] = &[
    f("transferLoops", Int),
    f("linger", Duration),
    f("maxBatch", Int),
    f("persistMaxBatch", Int),
    f("persistLinger", Duration),
    f("maxQueuedRecords", Int),
    f("commitInterval", Duration),
    f("drainTimeout", Duration),
    f("dedupWindow", Duration),
    f("dedupLedger", Bool),
    f("sessionTimeout", Duration),
    f("staticMembership", Bool),
    f("redisWaitReplicas", Int),
    f("redisWaitTimeout", Duration),
    f("retryBackoffInitial", Duration),
    f("retryBackoffMax", Duration),
    f("producerMaxRecordBytes", Int),
    f("deadLetterTopic", Str),
    f("maxRecordBytes", Int),
    f("maxMessagesPerRecord", Int),
    f("maxContentBytes", Int),
    f("maxFieldBytes", Int),
    f("maxOptions", Int),
    f("maxAtUsers", Int),
    f("maxHeaders", Int),
    f("maxHeaderBytes", Int),
    f("logFormat", Str),
];

pub(crate) const MSGTRANSFER: FileSchema = FileSchema {
    name: "openim-msgtransfer.yml",
    fields: &[
        f("prometheus", Section(PROMETHEUS)),
        f("ratelimiter", Section(RATE_LIMITER)),
        f("circuitBreaker", Section(CIRCUIT_BREAKER)),
        f("rustTransfer", Section(RUST_TRANSFER)),
    ],
};

// ---------------------------------------------------------------- kafka.yml

const KAFKA_TLS: &[Field] = &[
    f("enableTLS", Bool),
    f("caCrt", Str),
    f("clientCrt", Str),
    f("clientKey", Str),
    f("clientKeyPwd", Str),
    f("insecureSkipVerify", Bool),
];

pub(crate) const KAFKA: FileSchema = FileSchema {
    name: "kafka.yml",
    fields: &[
        f("username", Str),
        f("password", Str),
        f("producerAck", Str),
        f("compressType", Str),
        f("address", StrList),
        f("toRedisTopic", Str),
        f("toMongoTopic", Str),
        f("toPushTopic", Str),
        f("toOfflinePushTopic", Str),
        f("toRedisGroupID", Str),
        f("toMongoGroupID", Str),
        f("toPushGroupID", Str),
        f("toOfflinePushGroupID", Str),
        f("tls", Section(KAFKA_TLS)),
    ],
};

// ---------------------------------------------------------------- redis.yml

const SENTINEL: &[Field] = &[
    f("masterName", Str),
    f("sentinelsAddrs", StrList),
    f("routeByLatency", Bool),
    f("routeRandomly", Bool),
];

pub(crate) const REDIS: FileSchema = FileSchema {
    name: "redis.yml",
    fields: &[
        f("address", StrList),
        f("username", Str),
        f("password", Str),
        f("redisMode", Str),
        // v3.8.0 and earlier: a boolean instead of `redisMode`.
        f("clusterMode", Bool),
        // Older files; no effect.
        f("enablePipeline", Bool),
        f("db", Int),
        f("maxRetry", Int),
        f("poolSize", Int),
        f("sentinelMode", Section(SENTINEL)),
    ],
};

// ---------------------------------------------------------------- mongodb.yml

const REPLICA_SET: &[Field] = &[
    f("name", Str),
    f("hosts", StrList),
    f("readConcern", Str),
    f("maxStaleness", Duration),
];

const READ_PREFERENCE: &[Field] = &[
    f("mode", Str),
    f("maxStaleness", Duration),
    f("tagSets", Any),
];

const WRITE_CONCERN: &[Field] = &[f("w", Any), f("j", Bool), f("wtimeout", Duration)];

pub(crate) const MONGODB: FileSchema = FileSchema {
    name: "mongodb.yml",
    fields: &[
        f("uri", Str),
        f("address", StrList),
        f("database", Str),
        f("username", Str),
        f("password", Str),
        f("authSource", Str),
        f("maxPoolSize", Int),
        f("maxRetry", Int),
        f("mongoMode", Str),
        f("replicaSet", Section(REPLICA_SET)),
        f("readPreference", Section(READ_PREFERENCE)),
        f("writeConcern", Section(WRITE_CONCERN)),
    ],
};

// ---------------------------------------------------------------- share.yml

const IM_ADMIN_USER: &[Field] = &[f("userIDs", StrList), f("nicknames", StrList)];

const MULTI_LOGIN: &[Field] = &[
    f("policy", Int),
    f("maxNumOneEnd", Int),
    f("customizeLoginNum", Any),
];

const RPC_MAX_BODY_SIZE: &[Field] = &[f("requestMaxBodySize", Int), f("responseMaxBodySize", Int)];

pub(crate) const SHARE: FileSchema = FileSchema {
    name: "share.yml",
    fields: &[
        f("secret", Str),
        // v3.8.0–v3.8.3.
        f("imAdminUserID", StrList),
        // Later files.
        f("imAdminUser", Section(IM_ADMIN_USER)),
        f("multiLogin", Section(MULTI_LOGIN)),
        f("rpcMaxBodySize", Section(RPC_MAX_BODY_SIZE)),
    ],
};

// ---------------------------------------------------------------- webhooks.yml

/// The fields of one webhook; "before" hooks use `failedContinue`, "after"
/// hooks `attentionIds`; both filter by content type.
const HOOK: &[Field] = &[
    f("enable", Bool),
    f("timeout", Int),
    f("failedContinue", Bool),
    f("attentionIds", StrList),
    f("allowedTypes", TypeList),
    f("deniedTypes", TypeList),
];

macro_rules! hooks {
    ($($name:literal),* $(,)?) => {
        &[f("url", Str), $(f($name, Section(HOOK))),*]
    };
}

pub(crate) const WEBHOOKS: FileSchema = FileSchema {
    name: "webhooks.yml",
    fields: hooks![
        "beforeSendSingleMsg",
        "beforeUpdateUserInfoEx",
        "afterUpdateUserInfoEx",
        "afterSendSingleMsg",
        "beforeSendGroupMsg",
        "beforeMsgModify",
        "afterSendGroupMsg",
        "afterMsgSaveDB",
        "afterUserOnline",
        "afterUserOffline",
        "afterUserKickOff",
        "beforeOfflinePush",
        "beforeOnlinePush",
        "beforeGroupOnlinePush",
        "beforeAddFriend",
        "beforeUpdateUserInfo",
        "afterUpdateUserInfo",
        "beforeCreateGroup",
        "afterCreateGroup",
        "beforeMemberJoinGroup",
        "beforeSetGroupMemberInfo",
        "afterSetGroupMemberInfo",
        "afterQuitGroup",
        "afterKickGroupMember",
        "afterDismissGroup",
        "beforeApplyJoinGroup",
        "afterGroupMsgRead",
        "afterSingleMsgRead",
        "beforeUserRegister",
        "afterUserRegister",
        "afterTransferGroupOwner",
        "beforeSetFriendRemark",
        "afterSetFriendRemark",
        "afterGroupMsgRevoke",
        "afterJoinGroup",
        "beforeInviteUserToGroup",
        "afterSetGroupInfo",
        "beforeSetGroupInfo",
        "afterSetGroupInfoEx",
        "beforeSetGroupInfoEx",
        "afterRevokeMsg",
        "beforeAddBlack",
        "afterAddFriend",
        "beforeAddFriendAgree",
        "afterAddFriendAgree",
        "afterDeleteFriend",
        "beforeImportFriends",
        "afterImportFriends",
        "afterRemoveBlack",
        "beforeCreateSingleChatConversations",
        "afterCreateSingleChatConversations",
        "beforeCreateGroupChatConversations",
        "afterCreateGroupChatConversations",
    ],
};

// ---------------------------------------------------------------- log.yml

pub(crate) const LOG: FileSchema = FileSchema {
    name: "log.yml",
    fields: &[
        f("storageLocation", Str),
        f("rotationTime", Int),
        f("remainRotationCount", Int),
        f("remainLogLevel", Int),
        f("isStdout", Bool),
        f("isJson", Bool),
        f("isSimplify", Bool),
        f("withStack", Bool),
        // Size-based rotation (some v3.8 files).
        f("maxSize", Int),
        f("maxBackups", Int),
        f("maxAge", Int),
        f("compress", Bool),
    ],
};

/// Every file `load` reads, in the order it reads them.
pub(crate) const FILES: [&FileSchema; 7] = [
    &MSGTRANSFER,
    &KAFKA,
    &REDIS,
    &MONGODB,
    &SHARE,
    &WEBHOOKS,
    &LOG,
];

/// The field called `name` among `fields`.
pub(crate) fn find(fields: &'static [Field], name: &str) -> Option<&'static Field> {
    fields.iter().find(|fd| fd.name == name)
}
