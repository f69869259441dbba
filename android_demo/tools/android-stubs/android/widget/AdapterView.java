// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.widget;

import android.content.Context;
import android.view.View;

public abstract class AdapterView<T extends Adapter> extends android.view.ViewGroup {
    public AdapterView(Context context) { super(context); throw new RuntimeException("Stub!"); }
    public abstract T getAdapter();
    public abstract void setAdapter(T adapter);
    public final OnItemSelectedListener getOnItemSelectedListener() { throw new RuntimeException("Stub!"); }
    public void setOnItemSelectedListener(OnItemSelectedListener listener) { throw new RuntimeException("Stub!"); }

    public interface OnItemSelectedListener {
        void onItemSelected(AdapterView<?> parent, View view, int position, long id);
        void onNothingSelected(AdapterView<?> parent);
    }
}
