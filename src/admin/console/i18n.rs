//! The console's words in English and Chinese. A page's language comes
//! from `?lang=`, then the cookie it sets, then `Accept-Language`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The language an `Accept-Language` header prefers (English unless
    /// Chinese comes first).
    pub fn accepted(header: &str) -> Lang {
        match header.trim_start().get(..2) {
            Some(p) if p.eq_ignore_ascii_case("zh") => Lang::Zh,
            _ => Lang::En,
        }
    }

    /// The word for `key` (the key itself when it has none).
    pub fn t(self, key: &'static str) -> &'static str {
        let (en, zh) = WORDS.iter().find(|(k, ..)| *k == key).map_or((key, key), |(_, en, zh)| (*en, *zh));
        match self {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }
}

/// (key, English, Chinese).
const WORDS: &[(&str, &str, &str)] = &[
    ("title", "Points ledger console", "积分账本控制台"),
    ("login", "Sign in", "登录"),
    ("logout", "Sign out", "退出"),
    ("token", "Access token", "访问令牌"),
    ("bad_token", "That token is not known.", "令牌无效。"),
    ("signed_in_as", "Signed in as", "当前用户"),
    ("programmes", "Programmes", "积分计划"),
    ("member", "Member", "会员"),
    ("member_id", "Member id", "会员编号"),
    ("look_up", "Look up", "查询"),
    ("available", "Available", "可用"),
    ("reserved", "Reserved", "冻结中"),
    ("pending", "Pending (held)", "待审核"),
    ("debt", "Debt", "欠分"),
    ("growth", "Growth", "成长值"),
    ("level", "Level", "等级"),
    ("frozen", "Frozen", "冻结"),
    ("earning", "earning", "获取"),
    ("spending", "spending", "使用"),
    ("none", "none", "无"),
    ("lots", "Lots", "积分批次"),
    ("lot", "Lot", "批次"),
    ("remaining", "Remaining", "剩余"),
    ("expires", "Expires", "过期时间"),
    ("never", "never", "永不过期"),
    ("statement", "Statement", "明细"),
    ("at", "Time", "时间"),
    ("event", "Event", "事件"),
    ("change", "Change", "变动"),
    ("balance", "Balance", "余额"),
    ("request", "Request", "请求"),
    ("operator", "Operator", "操作员"),
    ("client", "Client", "客户端"),
    ("reason", "Reason", "原因"),
    ("points", "Points", "积分"),
    ("next_page", "Next page", "下一页"),
    ("actions", "Actions", "操作"),
    ("adjust", "Adjust", "调整积分"),
    ("freeze", "Freeze", "冻结"),
    ("unfreeze", "Unfreeze", "解冻"),
    ("recycle", "Recycle all points", "回收全部积分"),
    ("release", "Release held points", "释放待审核积分"),
    ("forfeit", "Forfeit held points", "没收待审核积分"),
    ("approve", "Approve", "批准"),
    ("reject", "Reject", "驳回"),
    ("waiting_approval", "Adjustments waiting for approval", "待审批的调整"),
    ("confirm", "Confirm", "确认"),
    ("confirm_q", "Please confirm this action", "请确认此操作"),
    ("cancel", "Cancel", "取消"),
    ("done", "Done", "已完成"),
    ("refused", "Refused", "被拒绝"),
    ("waits_approval", "Waits for a second admin's approval", "等待另一位管理员批准"),
    ("explain", "Balance as of", "历史余额"),
    ("as_of", "As of (YYYY-MM-DD)", "截至日期 (YYYY-MM-DD)"),
    ("alerts", "Alerts", "风险告警"),
    ("rule", "Rule", "规则"),
    ("accounts", "Accounts", "账户"),
    ("state", "State", "状态"),
    ("acknowledge", "Acknowledge", "确认告警"),
    ("resolve", "Resolve", "解决"),
    ("risk_today", "Risk counters today", "今日风险计数"),
    ("books", "Books", "账簿"),
    ("period", "Period", "周期"),
    ("day", "Day", "日"),
    ("month", "Month", "月"),
    ("quarter", "Quarter", "季度"),
    ("year", "Year", "年"),
    ("from", "From", "从"),
    ("to", "To", "至"),
    ("show", "Show", "显示"),
    ("issued", "Issued", "发放"),
    ("spent", "Spent", "使用"),
    ("refunded", "Refunded", "退回"),
    ("spent_cash", "Spent in points + cash orders", "积分+现金订单使用"),
    ("orders_points", "Points-only orders", "纯积分订单"),
    ("orders_cash", "Points + cash orders", "积分+现金订单"),
    ("expired", "Expired", "过期"),
    ("closing", "Closing balance", "期末余额"),
    ("liability", "Liability (cash)", "负债 (现金)"),
    ("balanced", "Balanced", "平衡"),
    ("csv", "Download CSV", "下载 CSV"),
    ("forecast", "Expiring in the next days", "即将过期"),
    ("days", "days", "天"),
    ("audit", "Audit log", "审计日志"),
    ("action", "Action", "操作"),
    ("filter", "Filter", "筛选"),
    ("programme", "Programme", "计划"),
    ("rules", "Rules in force", "当前规则"),
    ("history", "Version history", "版本历史"),
    ("version", "Version", "版本"),
    ("changed", "What changed", "变更内容"),
    ("what_if", "What if: a proposed rule set", "规则模拟"),
    ("run", "Run", "运行"),
    ("read_only", "This client may read only: no actions.", "此客户端只读：不可操作。"),
    ("not_found", "No such account.", "账户不存在。"),
    ("yes", "yes", "是"),
    ("no", "no", "否"),
];
