//! Round-trip properties: every message type we declare survives
//! encode → decode unchanged, for arbitrary field values.

use msgtransfer::proto::{
    MarkAsReadTips, MsgData, MsgDataToMongoByMq, MsgDataToMq, NotificationElem, OfflinePushInfo,
    PushMsgDataToMq,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use prost::Message;

fn push_info() -> impl Strategy<Value = OfflinePushInfo> {
    (
        ".{0,8}",
        ".{0,8}",
        ".{0,8}",
        ".{0,8}",
        any::<bool>(),
        ".{0,8}",
    )
        .prop_map(|(title, desc, ex, sound, badge, signal)| OfflinePushInfo {
            title,
            desc,
            ex,
            i_os_push_sound: sound,
            i_os_badge_count: badge,
            signal_info: signal,
        })
}

fn msg_data() -> impl Strategy<Value = MsgData> {
    (
        (".{0,12}", ".{0,12}", ".{0,12}", ".{0,12}", ".{0,12}"),
        (
            any::<i32>(),
            ".{0,8}",
            ".{0,8}",
            any::<i32>(),
            any::<i32>(),
            any::<i32>(),
        ),
        (
            vec(any::<u8>(), 0..64),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i32>(),
        ),
        (
            any::<bool>(),
            btree_map("[a-zA-Z]{1,12}", any::<bool>(), 0..6),
            proptest::option::of(push_info()),
            vec(".{0,6}", 0..4),
            ".{0,8}",
            ".{0,8}",
        ),
    )
        .prop_map(
            |(
                (send_id, recv_id, group_id, client_msg_id, server_msg_id),
                (
                    sender_platform_id,
                    sender_nickname,
                    sender_face_url,
                    session_type,
                    msg_from,
                    content_type,
                ),
                (content, seq, send_time, create_time, status),
                (is_read, options, offline_push_info, at_user_id_list, attached_info, ex),
            )| MsgData {
                send_id,
                recv_id,
                group_id,
                client_msg_id,
                server_msg_id,
                sender_platform_id,
                sender_nickname,
                sender_face_url,
                session_type,
                msg_from,
                content_type,
                content,
                seq,
                send_time,
                create_time,
                status,
                is_read,
                options,
                offline_push_info,
                at_user_id_list,
                attached_info,
                ex,
            },
        )
}

fn round_trips<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    assert_eq!(&M::decode(bytes.as_slice()).unwrap(), m);
}

proptest! {
    #[test]
    fn msg_data_round_trips(m in msg_data()) {
        round_trips(&m);
    }

    #[test]
    fn mongo_record_round_trips(last_seq in any::<i64>(), conv in ".{0,16}", msgs in vec(msg_data(), 0..4)) {
        round_trips(&MsgDataToMongoByMq { last_seq, conversation_id: conv, msg_data: msgs });
    }

    #[test]
    fn push_record_round_trips(m in proptest::option::of(msg_data()), conv in ".{0,16}") {
        round_trips(&PushMsgDataToMq { msg_data: m, conversation_id: conv });
    }

    #[test]
    fn mq_wrapper_round_trips(m in proptest::option::of(msg_data()), token in ".{0,16}") {
        round_trips(&MsgDataToMq { token, msg_data: m });
    }

    #[test]
    fn notification_elem_round_trips(detail in ".{0,64}") {
        round_trips(&NotificationElem { detail });
    }

    #[test]
    fn mark_as_read_tips_round_trips(
        user in ".{0,8}", conv in ".{0,16}", seqs in vec(any::<i64>(), 0..8), has_read in any::<i64>()
    ) {
        round_trips(&MarkAsReadTips {
            mark_as_read_user_id: user,
            conversation_id: conv,
            seqs,
            has_read_seq: has_read,
        });
    }
}
