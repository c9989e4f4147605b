/// HTTP dates (RFC 9110 §5.6.7, the IMF-fixdate form `Sun, 06 Nov 1994 08:49:37 GMT`),
/// formatted and parsed in pure Swift.
///
/// The parser reads request headers (`If-Modified-Since`), so it is total: any text, however
/// long or absurd (a year of -2147483648, a day of 99, digits that overflow), gives either a
/// date or nil, never a trap. The IMF-fixdate and the two obsolete forms RFC 9110 lists are
/// accepted; anything else counts as absent (the full answer is always correct).
public enum HTTPDate {
    private static let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let fullWeekdays = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// Formats seconds since 1970 (UTC) as an IMF-fixdate. Years are clamped to 0001...9999,
    /// the range the format can carry.
    public static func format(secondsSince1970 seconds: Int64) -> String {
        let limit: Int64 = 253_402_300_799 // 9999-12-31T23:59:59Z
        let clamped = min(max(seconds, -62_135_596_800), limit) // from 0001-01-01
        let days = floorDivide(clamped, 86_400)
        let secondOfDay = clamped - days * 86_400
        let (year, month, day) = civil(fromDays: days)
        let weekday = Int(((days % 7) + 7 + 4) % 7) // 1970-01-01 was a Thursday
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        var yearText = String(year)
        while yearText.utf8.count < 4 { yearText = "0" + yearText }
        return "\(weekdays[weekday]), \(two(day)) \(months[Int(month) - 1]) \(yearText) "
            + "\(two(secondOfDay / 3600)):\(two(secondOfDay / 60 % 60)):\(two(secondOfDay % 60)) GMT"
    }

    /// Parses an HTTP date into seconds since 1970: the IMF-fixdate, and the two obsolete forms
    /// RFC 9110 §5.6.7 asks recipients to accept (RFC 850, `Sunday, 06-Nov-94 08:49:37 GMT`,
    /// and asctime, `Sun Nov  6 08:49:37 1994`); nil for anything else, including dates that do
    /// not exist (31 Feb, hour 24). Weekdays must be weekday names but are not checked against
    /// the date (RFC 9110 lets a recipient ignore them).
    public static func parse(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        if bytes.count == 29 { return parseFixdate(bytes) }
        if bytes.count == 24 { return parseAsctime(bytes) }
        return parseRFC850(bytes)
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT`: exactly 29 bytes.
    private static func parseFixdate(_ bytes: [UInt8]) -> Int64? {
        guard bytes[3] == UInt8(ascii: ","), bytes[4] == 0x20, bytes[7] == 0x20, bytes[11] == 0x20, bytes[16] == 0x20,
              bytes[26...28].elementsEqual("GMT".utf8),
              weekdays.contains(where: { $0.utf8.elementsEqual(bytes[0..<3]) }),
              let monthIndex = months.firstIndex(where: { $0.utf8.elementsEqual(bytes[8..<11]) }),
              let day = digits(bytes[5..<7]), let year = digits(bytes[12..<16])
        else { return nil }
        return instant(year: year, monthIndex: monthIndex, day: day, clock: bytes[17..<25])
    }

    /// `Sun Nov  6 08:49:37 1994`: exactly 24 bytes, the day padded with a space.
    private static func parseAsctime(_ bytes: [UInt8]) -> Int64? {
        guard bytes[3] == 0x20, bytes[7] == 0x20, bytes[10] == 0x20, bytes[19] == 0x20,
              weekdays.contains(where: { $0.utf8.elementsEqual(bytes[0..<3]) }),
              let monthIndex = months.firstIndex(where: { $0.utf8.elementsEqual(bytes[4..<7]) }),
              let day = bytes[8] == 0x20 ? digits(bytes[9..<10]) : digits(bytes[8..<10]),
              let year = digits(bytes[20..<24])
        else { return nil }
        return instant(year: year, monthIndex: monthIndex, day: day, clock: bytes[11..<19])
    }

    /// `Sunday, 06-Nov-94 08:49:37 GMT`: a full weekday name, a two-digit year (RFC 9110: one
    /// that would be more than 50 years in the future is in the past century; read here as
    /// 1970-2069).
    private static func parseRFC850(_ bytes: [UInt8]) -> Int64? {
        guard let comma = bytes.firstIndex(of: UInt8(ascii: ",")), comma >= 6, comma <= 9,
              bytes.count == comma + 24,
              fullWeekdays.contains(where: { $0.utf8.elementsEqual(bytes[0..<comma]) })
        else { return nil }
        let rest = bytes[(comma + 1)...]
        let base = rest.startIndex
        guard rest[base] == 0x20, rest[base + 3] == UInt8(ascii: "-"), rest[base + 7] == UInt8(ascii: "-"),
              rest[base + 10] == 0x20, rest[(base + 19)...].elementsEqual(" GMT".utf8),
              let monthIndex = months.firstIndex(where: { $0.utf8.elementsEqual(rest[(base + 4)..<(base + 7)]) }),
              let day = digits(rest[(base + 1)..<(base + 3)]), let shortYear = digits(rest[(base + 8)..<(base + 10)])
        else { return nil }
        let year = shortYear < 70 ? 2000 + shortYear : 1900 + shortYear
        return instant(year: year, monthIndex: monthIndex, day: day, clock: rest[(base + 11)..<(base + 19)])
    }

    /// A checked date and `HH:MM:SS` clock as seconds since 1970; nil for a date or time that
    /// does not exist.
    private static func instant(year: Int64, monthIndex: Int, day: Int64, clock: ArraySlice<UInt8>) -> Int64? {
        let base = clock.startIndex
        guard clock.count == 8, clock[base + 2] == UInt8(ascii: ":"), clock[base + 5] == UInt8(ascii: ":"),
              let hour = digits(clock[base..<(base + 2)]), let minute = digits(clock[(base + 3)..<(base + 5)]),
              let second = digits(clock[(base + 6)..<(base + 8)])
        else { return nil }
        let month = Int64(monthIndex + 1)
        guard year >= 1, day >= 1, day <= daysIn(month: month, year: year), hour <= 23, minute <= 59, second <= 60 else {
            return nil
        }
        // A leap second is read as the last second of its minute.
        return days(fromCivil: year, month, day) * 86_400 + hour * 3600 + minute * 60 + min(second, 59)
    }

    /// A fixed number of ASCII digits as a value (at most 4 here, so no overflow).
    private static func digits(_ slice: ArraySlice<UInt8>) -> Int64? {
        var value: Int64 = 0
        for byte in slice {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int64(byte - UInt8(ascii: "0"))
        }
        return value
    }

    private static func isLeap(_ year: Int64) -> Bool { year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) }

    private static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    private static func floorDivide(_ a: Int64, _ b: Int64) -> Int64 {
        let quotient = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? quotient - 1 : quotient
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (years 1...9999 here, so every
    /// intermediate value is small). The usual era-based conversion.
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = floorDivide(y, 400)
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The inverse of ``days(fromCivil:_:_:)``.
    static func civil(fromDays days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = days + 719_468
        let era = floorDivide(z, 146_097)
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthPrime = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthPrime + 2) / 5 + 1
        let month = monthPrime < 10 ? monthPrime + 3 : monthPrime - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
