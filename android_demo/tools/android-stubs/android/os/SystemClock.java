// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.os;

public final class SystemClock {
    SystemClock() { throw new RuntimeException("Stub!"); }
    public static long elapsedRealtime() { throw new RuntimeException("Stub!"); }
    public static long elapsedRealtimeNanos() { throw new RuntimeException("Stub!"); }
    public static long uptimeMillis() { throw new RuntimeException("Stub!"); }
}
