"""What invoice_zh's texts are made of: the products sold, the parts of company names, the label words of each
mode, and the two writings a generated value needs beyond plain text: the 18-character unified social credit
code (GB 32100-2015, with its check characters) and an amount in Chinese capital numerals."""

from __future__ import annotations

import random
from decimal import Decimal

# (tax category as VAT invoices print it before the name, *类别*名称; name; unit; lowest and highest unit price in
# CNY). A name holds none of any mode's label words (a test checks).
PRODUCTS = [
    ("纸制品", "A4复印纸", "箱", 80, 260), ("纸制品", "打印纸", "包", 20, 40),
    ("计算机配套产品", "无线鼠标", "个", 39, 199), ("计算机配套产品", "机械键盘", "个", 199, 899),
    ("计算机", "笔记本电脑", "台", 3999, 12999), ("计算机", "台式电脑主机", "台", 2999, 8999),
    ("计算机外部设备", "激光打印机", "台", 899, 3999), ("计算机外部设备", "27英寸显示器", "台", 999, 2999),
    ("通信设备", "无线路由器", "台", 99, 699), ("手机", "智能手机", "部", 999, 8999),
    ("家具", "办公椅", "把", 199, 1299), ("家具", "办公桌", "张", 499, 2599), ("家具", "文件柜", "个", 399, 1599),
    ("日用杂品", "垃圾袋", "包", 5, 30), ("清洁用品", "洗手液", "瓶", 9, 45), ("饮料", "矿泉水", "箱", 24, 60),
    ("茶叶", "西湖龙井茶", "盒", 168, 1288), ("焙烤食品", "月饼礼盒", "盒", 98, 588), ("酒", "53度白酒", "瓶", 99, 1599),
    ("办公用品", "中性笔", "盒", 12, 45), ("办公用品", "订书机", "个", 8, 45), ("办公用品", "文件夹", "个", 3, 25),
    ("办公用品", "白板", "块", 80, 400), ("文具", "笔记本", "本", 5, 30), ("印刷品", "宣传册印刷", "本", 2, 15),
    ("广告服务", "广告设计费", "项", 1000, 20000), ("信息技术服务", "软件开发服务", "项", 5000, 200000),
    ("信息技术服务", "技术服务费", "项", 800, 50000), ("信息技术服务", "云服务器租用", "月", 300, 5000),
    ("现代服务", "咨询服务费", "项", 2000, 60000), ("现代服务", "会议服务费", "次", 1500, 30000),
    ("餐饮服务", "餐饮服务", "次", 120, 4800), ("住宿服务", "住宿费", "晚", 180, 1200),
    ("运输服务", "货物运输服务", "次", 200, 8000), ("物流辅助服务", "仓储服务费", "月", 800, 20000),
    ("生活服务", "保洁服务", "月", 1500, 9000), ("建筑服务", "装修工程款", "项", 8000, 200000),
    ("钢材", "螺纹钢", "吨", 3500, 4800), ("水泥", "普通硅酸盐水泥", "吨", 350, 600),
    ("五金", "不锈钢螺丝", "盒", 15, 80), ("电线电缆", "铜芯电线", "卷", 120, 680), ("照明装置", "LED灯管", "支", 12, 60),
    ("家用电器", "挂式空调", "台", 1999, 5999), ("家用电器", "电热水壶", "个", 79, 399),
    ("医疗器械", "一次性医用口罩", "盒", 15, 60), ("医疗器械", "电子体温计", "支", 19, 99),
    ("化学药品制剂", "布洛芬缓释胶囊", "盒", 12, 35), ("服装", "工作服", "套", 80, 380), ("鞋", "劳保鞋", "双", 60, 260),
    ("汽油", "92号车用汽油", "升", 7, 9), ("汽车配件", "轮胎", "条", 300, 1500), ("纺织产品", "床上四件套", "套", 199, 899),
    ("塑料制品", "塑料周转箱", "个", 15, 60), ("包装材料", "瓦楞纸箱", "个", 1, 8), ("化妆品", "护手霜", "支", 15, 89),
    ("乐器", "电子琴", "台", 599, 2999), ("体育用品", "篮球", "个", 79, 299), ("图书", "企业管理类图书", "本", 35, 128),
    ("软件", "正版办公软件授权", "套", 300, 3000), ("培训服务", "员工培训费", "人", 500, 5000),
    ("租赁服务", "办公室租金", "月", 3000, 50000), ("水果", "红富士苹果", "箱", 40, 120), ("肉类", "冷鲜猪肉", "千克", 25, 45),
]
# A company is "{city}{Faker's prefix}{industry}{suffix}", as registered: 深圳市昊嘉科技有限公司.
INDUSTRIES = ["科技", "贸易", "商贸", "电子", "建材", "餐饮管理", "物流", "文化传媒", "医疗器械", "食品", "机械设备",
              "信息技术", "环保科技", "包装材料", "建筑工程", "办公用品", "实业", "网络科技", "供应链管理", "酒店管理"]
SUFFIXES = ["有限公司", "有限公司", "有限公司", "有限责任公司", "股份有限公司", "商行", "经营部"]
BANKS = ["中国工商银行", "中国建设银行", "中国银行", "中国农业银行", "招商银行", "交通银行", "兴业银行", "浦发银行"]
REMARKS = ["含运费", "合同编号HT{n}", "项目：办公室改造", "订单号PO{n}", "请于30日内付款", "分批交货第{k}批"]
# The tax rates VAT invoices print; amounts are tax-inclusive (the recipe's convention), so a rate only adds text.
TAX_RATES = [13, 13, 13, 9, 6, 6, 3, 1]

# Label words by mode. `unseen` shares none with `normal` or `train` (neither contains one of the other's: a test
# checks), so test_unseen.jsonl tells a learned extractor from rules written for the shipped words.
WORDS = {
    "normal": {
        "title": ["电子发票（普通发票）", "电子发票（增值税专用发票）", "增值税电子普通发票", "增值税普通发票"],
        "number": ["发票号码", "发票号"],
        "date": ["开票日期", "日期"],
        "seller": ["销售方", "销方", "卖方"],
        "buyer": ["购买方", "购方", "买方"],
        "name": ["名称"],
        "tax_id": ["纳税人识别号", "统一社会信用代码/纳税人识别号", "税号"],
        "item": ["项目名称", "货物或应税劳务、服务名称", "商品名称"],
        "quantity": ["数量"],
        "unit": ["单位"],
        "unit_price": ["单价", "单价（含税）"],
        "amount": ["金额", "金额（含税）"],
        "total": ["价税合计", "合计金额", "合计"],
        "capital": ["大写"],
        "small": ["小写"],
        "label_seps": ["：", ":", " "],
        "noise": ["发票代码", "校验码", "开户行及账号", "收款人", "复核", "开票人", "备注", "税率", "税额"],
    },
    "unseen": {  # the slip's and the chat's; the English form's are ENGLISH
        "title": ["收款凭证", "结算凭据"],
        "number": ["票据编号"],
        "date": ["出具时间"],
        "seller": ["出票方", "供方"],
        "buyer": ["收票方", "需方"],
        "tax_id": ["登记代码"],
        "item": ["品目"],
        "unit_price": ["每件价格"],
        "amount": ["小计"],
        "total": ["应付总额"],
        "capital": ["汉字"],
        "small": ["阿拉伯数字"],
        "label_seps": ["=", "》", "→"],
        "noise": ["经办人", "流水号", "付款期限"],
    },
}
# The unseen English form's words (an export invoice's headers).
ENGLISH = ["INVOICE", "COMMERCIAL INVOICE", "Invoice No.", "Date", "Seller", "Buyer", "Tax ID", "Description", "Qty",
           "UoM", "Unit price", "Amount", "Total due", "Currency"]
# Words only the training pool adds to normal's: a student that read more than one vocabulary learns that label
# words vary. None is an unseen word.
EXTRA = {
    "title": ["增值税专用发票", "电子普通发票"],
    "number": ["票号", "号码"],
    "date": ["开具日期", "开票时间"],
    "seller": ["销货单位", "开票方", "供应商"],
    "buyer": ["购货单位", "受票方", "客户"],
    "name": [],
    "tax_id": ["纳税识别号", "识别号", "社会信用代码"],
    "item": ["货物名称", "服务名称"],
    "quantity": ["数目"],
    "unit": ["计价单位"],
    "unit_price": ["含税单价"],
    "amount": ["含税金额", "价款"],
    "total": ["总金额", "总计", "应收金额"],
    "capital": ["金额大写"],
    "small": ["金额小写"],
    "label_seps": [" : ", "："],
    "noise": [],
}
WORDS["train"] = {k: v + [e for e in EXTRA[k] if e not in v] for k, v in WORDS["normal"].items()}

# The unified social credit code (GB 32100-2015): 31 characters (no I, O, Z, S, V), a weighted check character
# at the end; characters 9-17 are the organisation code (GB 11714), with its own check character.
CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
# Registration authority and kind: 91 an enterprise mostly, 92 a sole trader, 93 a cooperative, 12 an institution.
REGISTRATIONS = ["91", "91", "91", "91", "92", "93", "12", "52"]


def credit_code(rng: random.Random, division: str) -> str:
    """A well-formed unified social credit code of a company registered in `division` (6 digits)."""
    body = "".join(rng.choice("0123456789" if rng.random() < 0.85 else CREDIT_CHARS[10:]) for _ in range(8))
    org = 11 - sum(int(c, 36) * w for c, w in zip(body, ORG_WEIGHTS)) % 11
    head = rng.choice(REGISTRATIONS) + division + body + {10: "X", 11: "0"}.get(org, str(org))
    check = (31 - sum(CREDIT_CHARS.index(c) * w for c, w in zip(head, CREDIT_WEIGHTS)) % 31) % 31
    return head + CREDIT_CHARS[check]


CAPITAL_DIGITS = "零壹贰叁肆伍陆柒捌玖"
# Quantities as a sentence writes them (两箱, 十二个): the counts people spell out.
SPOKEN = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五", 6: "六", 7: "七", 8: "八", 9: "九", 10: "十", 12: "十二",
          20: "二十", 50: "五十", 100: "一百"}


def capital(amount: Decimal) -> str:
    """An amount as cheques and invoices write it in capital numerals: 1234.50 -> 壹仟贰佰叁拾肆元伍角,
    100500 -> 壹拾万零伍佰元整, 1004.05 -> 壹仟零肆元零伍分."""
    cents = int((amount * 100).to_integral_value())
    yuan, jiao, fen = cents // 100, cents // 10 % 10, cents % 10
    digits, out, zero = str(yuan), "", False
    for i, ch in enumerate(digits):
        place = len(digits) - 1 - i
        if ch == "0":
            zero = bool(out)
        else:
            out += ("零" if zero else "") + CAPITAL_DIGITS[int(ch)] + ("", "拾", "佰", "仟")[place % 4]
            zero = False
        if place in (4, 8) and int(digits[max(0, i - 3):i + 1]):  # the section's 万 or 亿, a zero after it afresh
            out, zero = out + ("万" if place == 4 else "亿"), False
    out += "元" if out else ""
    if not jiao and not fen:
        return out + "整"
    if jiao:
        out += CAPITAL_DIGITS[jiao] + "角"
    elif out:
        out += "零"
    return out + (CAPITAL_DIGITS[fen] + "分" if fen else "")
